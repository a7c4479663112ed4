"""Frozen, validated configs per stage, of a whole run, of distillation and of indexes: the one config home.

YAML files only set their defaults (read by `config_files.py`, the one loader); CLI flags override."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from calm_rag.languages import CJK_LANGS, DEFAULT_LANGS, check_lang
from calm_rag.models import DEFAULT_EMBEDDER, DEFAULT_GENERATOR


BACKENDS = ("auto", "llama.cpp", "transformers")
PRECISIONS = ("q8_0", "shipped", "f16", "f32")


class ConfigError(ValueError):
    """A config value or YAML key is wrong; the message names it and the fix."""


def option(text: str, default: Any = dataclasses.MISSING, *, accepts: tuple[type, ...] = (), **kw: Any) -> Any:
    """A config field with its help text; `accepts`: types taken besides the annotation's (converted in
    __post_init__, e.g. YAML's yes/no booleans for a string field)."""
    metadata = {"help": text, **({"accepts": accepts} if accepts else {})}
    if default is dataclasses.MISSING:
        return field(metadata=metadata, **kw)
    return field(default=default, metadata=metadata, **kw)


def require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def check_languages(langs, where: str) -> tuple[str, ...]:
    """A non-empty list of known language codes, each once (calm.languages, eval.languages)."""
    given = tuple(langs)
    try:
        checked = tuple(check_lang(x, where) for x in given)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    require(len(checked) >= 1, f"{where} is empty; list at least one language")
    require(len(set(checked)) == len(checked), f"{where} repeats a language: {given}")
    return checked


@dataclass(frozen=True)
class ModelConfig:
    generator: str = option("generator: packaged name, local folder or hub id", DEFAULT_GENERATOR)
    adapter: str | None = option("optional LoRA adapter folder to load on top of the generator", None)
    embedder: str = option("embedder: packaged name, local folder or hub id", DEFAULT_EMBEDDER)
    device: str | None = option("cpu, cuda or None for automatic", None)
    backend: str = option("generation engine: auto (llama.cpp on CPU, transformers on CUDA), llama.cpp or "
                          "transformers; DPO always trains on transformers", "auto")
    precision: str = option("llama.cpp weights: q8_0 (converted once from the model folder; measured fastest "
                            "and closest to transformers), shipped (a packaged GGUF as it ships), f16 or f32", "q8_0")
    threads: int = option("CPU threads for generation (0: every core this process may use)", 0)

    def __post_init__(self) -> None:
        require(bool(self.generator), "model.generator is empty; name a model, e.g. qwen2.5-coder-0.5b-instruct")
        require(self.backend in BACKENDS, f"model.backend={self.backend!r}; use one of {', '.join(BACKENDS)}")
        require(self.precision in PRECISIONS, f"model.precision={self.precision!r}; use one of {', '.join(PRECISIONS)}")
        require(isinstance(self.threads, int) and self.threads >= 0,
                f"model.threads={self.threads!r}; use 0 (all cores) or a positive number")
        require(self.device in (None, "cpu", "cuda") or str(self.device).startswith("cuda:"),
               f"model.device={self.device!r}; use cpu, cuda, cuda:N or leave it unset")


@dataclass(frozen=True)
class GenerateConfig:
    n: int = option("samples per prompt", 3)
    temperature: float = option("sampling temperature; 0 means greedy", 0.7)
    top_p: float = option("nucleus sampling mass", 0.95)
    max_new_tokens: int = option("tokens generated per answer", 96)
    min_new_tokens: int = option("end-of-turn is blocked before this many tokens (0: off; throughput benchmarks "
                                 "use max_new_tokens for fixed-length outputs)", 0)
    batch_size: int = option("sequences (prompts x samples) decoded together in one padded batch", 48)
    units_per_batch: int = option("question-language units answered together; question-major order puts all "
                                  "languages of a question in one batch when it is a multiple of the "
                                  "language count", 6)
    seed: int = option("random seed for sampling", 0)

    def __post_init__(self) -> None:
        require(self.n >= 1, f"generate.n={self.n}; use at least 1 sample")
        require(self.temperature >= 0, f"generate.temperature={self.temperature}; use a value >= 0")
        require(0 < self.top_p <= 1, f"generate.top_p={self.top_p}; use a value in (0, 1]")
        require(self.max_new_tokens >= 1, f"generate.max_new_tokens={self.max_new_tokens}; use >= 1")
        require(0 <= self.min_new_tokens <= self.max_new_tokens,
                f"generate.min_new_tokens={self.min_new_tokens}; use 0..max_new_tokens ({self.max_new_tokens})")
        require(self.batch_size >= 1, f"generate.batch_size={self.batch_size}; use >= 1")
        require(self.units_per_batch >= 1, f"generate.units_per_batch={self.units_per_batch}; use >= 1")


@dataclass(frozen=True)
class SelfRagConfig:
    retrieval: str = option("adaptive, always or never", "adaptive")
    threshold: float = option("retrieve when p([Retrieval]) / (p([Retrieval]) + p([No Retrieval])) > threshold", 0.2)
    top_k: int = option("passages per question (one generation per passage)", 3)
    critique: str = option("auto (from the tokenizer), native or verbalised", "auto")
    w_rel: float = option("weight of relevance in the passage score", 1.0)
    w_sup: float = option("weight of support in the passage score", 1.0)
    w_use: float = option("weight of utility in the passage score", 0.5)
    index: str | None = option("index folder to retrieve from", None)
    complete_answer: bool = option("when an output names no option, append the answer cue and take the model's "
                                   "most probable option letter (two-stage answer extraction)", True)
    critique_zero_shot: bool = option(
        "ask the verbalised critic's utility question of answers given without a passage; false skips it (each "
        "answer then scores 0): a zero-shot run with the majority vote needs no score, and sampling computes about a "
        "quarter fewer tokens (docs/results.md); the weighted vote needs it", True)

    def __post_init__(self) -> None:
        require(self.retrieval in ("adaptive", "always", "never"),
               f"selfrag.retrieval={self.retrieval!r}; use adaptive, always or never")
        require(0 <= self.threshold <= 1, f"selfrag.threshold={self.threshold}; use a probability in [0, 1]")
        require(self.top_k >= 1, f"selfrag.top_k={self.top_k}; use at least 1")
        require(self.critique in ("auto", "native", "verbalised"),
               f"selfrag.critique={self.critique!r}; use auto, native or verbalised")


VOTES = ("majority", "weighted")  # calm.vote: one count per sample (the paper), or critique-weighted


@dataclass(frozen=True)
class CalmConfig:
    languages: tuple[str, ...] = option("languages sampled and voted across", DEFAULT_LANGS)
    vote: str = option("the winner: majority (the paper's: most frequent letter) or weighted (each sample "
                       "weighs its Self-RAG critique score); changeable in a run folder: rerun the vote stage",
                       "majority")
    reuse: str | None = option("run folder of a run on these languages and more, with the same model, sampling, "
                               "Self-RAG and data settings: this run takes its samples (for its own languages) and "
                               "its base evaluation instead of computing them again, as the paper's language "
                               "ablation votes over subsets of one set of samples", None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "languages", check_languages(self.languages, "calm.languages"))
        require(len(self.languages) >= 2,
                f"calm.languages={list(self.languages)} has one language, but CALM votes across languages; list at "
                f"least two (calm.languages: [en, zh] in the run YAML, or --langs en,zh)")
        require(self.vote in VOTES, f"calm.vote={self.vote!r}; use majority or weighted")


@dataclass(frozen=True)
class PairsConfig:
    min_agreement: float | None = option(
        "keep only questions whose winning letter holds at least this share of the votes cast, in [0, 1] (e.g. "
        "0.5); None: every question with a winner, as in the paper", None)
    translate: bool = option(
        "when no response in a language agrees with the winner, the generator's translation of an agreeing response "
        "from another language is the chosen (the paper); false skips that language for the question (every pair "
        "is then on-policy, and the pairs stage needs no generator)", True)

    def __post_init__(self) -> None:
        require(self.min_agreement is None or 0 <= self.min_agreement <= 1,
                f"pairs.min_agreement={self.min_agreement}; use a share of the votes in [0, 1] such as 0.5 "
                f"(--min-agreement 0.5), or leave it unset for the paper's behaviour")


@dataclass(frozen=True)
class TrainConfig:
    beta: float = option("DPO beta", 0.1)
    learning_rate: float = option("AdamW learning rate", 5e-5)
    epochs: float = option("passes over the pairs", 1.0)
    max_steps: int = option("stop after N optimizer steps (-1: use epochs)", -1)
    batch_size: int = option("pairs per device step", 2)
    grad_accum: int = option("gradient accumulation steps", 1)
    max_length: int = option("max tokens of prompt + answer (passages live in the prompt)", 1024)
    lora_r: int = option("LoRA rank", 8)
    lora_alpha: int = option("LoRA alpha", 16)
    lora_dropout: float = option("LoRA dropout", 0.05)
    precompute_ref: bool = option("precompute reference log-probs once before training", False)
    save_steps: int = option("checkpoint every N steps (resume picks up the last one)", 50)
    seed: int = option("training seed", 0)
    lora_targets: str = option("LoRA target modules: all-linear, or a comma list such as q_proj,k_proj,v_proj,o_proj",
                              "all-linear")
    train_tokens: str = option("also train the embedding rows of the Self-RAG reflection tokens: auto (when the "
                              "tokenizer has them), reflection (require them) or none", "auto", accepts=(bool,))

    def __post_init__(self) -> None:
        if isinstance(self.train_tokens, bool):  # YAML reads yes/no/on/off as booleans
            object.__setattr__(self, "train_tokens", "reflection" if self.train_tokens else "none")
        require(self.train_tokens in ("auto", "reflection", "none"),
               f"train.train_tokens={self.train_tokens!r}; use auto, reflection or none")
        require(bool(str(self.lora_targets).strip()),
               "train.lora_targets is empty; use all-linear or a comma list such as q_proj,v_proj")
        require(self.save_steps >= 1, f"train.save_steps={self.save_steps}; use at least 1")
        require(self.max_steps == -1 or self.max_steps >= 1,
                f"train.max_steps={self.max_steps}; use a positive number of steps, or -1 to train by epochs")
        require(0 <= self.lora_dropout < 1, f"train.lora_dropout={self.lora_dropout}; use a value in [0, 1)")
        require(self.beta > 0, f"train.beta={self.beta}; use a positive value such as 0.1")
        require(self.learning_rate > 0, f"train.learning_rate={self.learning_rate}; use a positive value")
        require(self.epochs > 0 or self.max_steps > 0, "train.epochs and train.max_steps are both <= 0; set one")
        require(self.batch_size >= 1 and self.grad_accum >= 1, "train.batch_size and train.grad_accum must be >= 1")
        require(self.max_length >= 64, f"train.max_length={self.max_length}; use at least 64 tokens")
        require(self.lora_r >= 1, f"train.lora_r={self.lora_r}; use at least 1")


# ---------------------------------------------------------------- a whole run (calm-rag calm)


@dataclass(frozen=True)
class DataConfig:
    files: dict[str, str] = option("parallel QA files per language {lang: path}", None, )
    eval_fraction: float = option("share of questions held out for evaluation (by question, all languages)", 0.5)
    split_seed: int = option("seed of the train/eval split", 0)
    max_train: int | None = option("use at most N training questions", None)
    max_eval: int | None = option("use at most N evaluation questions", None)
    drop_mismatched: bool = option("drop questions whose gold/options disagree across languages", True)
    split: str | None = option("split file (splits/*.json, from scripts/make_splits.py): train questions come only "
                               "from its train list, eval only from its dev list; None: a seeded split by "
                               "eval_fraction", None)

    def __post_init__(self) -> None:
        require(bool(self.files), "data.files is empty; map each language to its QA file, e.g. en: data/en.json")
        require(0 <= self.eval_fraction < 1, f"data.eval_fraction={self.eval_fraction}; use a value in [0, 1)")
        for name in ("max_train", "max_eval"):  # a negative count would slice off the last questions
            value = getattr(self, name)
            flag = "--" + name.replace("_", "-")
            require(value is None or value >= 0,
                    f"data.{name}={value}; use 0 or more questions ({flag} N), or leave it unset for all")


@dataclass(frozen=True)
class EvalConfig:
    n: int = option("samples per question and language at evaluation (1 = greedy)", 1)
    retrieval: tuple[str, ...] = option("retrieval modes to evaluate: always, adaptive, never", ("adaptive",))
    languages: tuple[str, ...] | None = option("languages to evaluate in (None: calm.languages); more than were "
                                               "trained on measures transfer, as in the paper's ablation", None)

    def __post_init__(self) -> None:
        require(self.n >= 1, f"eval.n={self.n}; use at least 1 sample per question and language (1: greedy)")
        object.__setattr__(self, "retrieval", tuple(self.retrieval))
        require(len(self.retrieval) >= 1, "eval.retrieval is empty; list at least one of always, adaptive, never")
        if self.languages is not None:
            object.__setattr__(self, "languages", check_languages(self.languages, "eval.languages"))
        for mode in self.retrieval:
            require(mode in ("always", "adaptive", "never"), f"eval.retrieval has {mode!r}; use always, adaptive, never")


@dataclass(frozen=True)
class RunConfig:
    """A whole CALM run: every stage's config plus where the data and index are."""

    model: ModelConfig = field(default_factory=ModelConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    selfrag: SelfRagConfig = field(default_factory=SelfRagConfig)
    calm: CalmConfig = field(default_factory=CalmConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(files=demo_files()))
    eval: EvalConfig = field(default_factory=EvalConfig)
    index_recipe: str | None = None  # built on first use when selfrag.index is missing

    def __post_init__(self) -> None:
        require(not (self.calm.vote == "weighted" and self.selfrag.retrieval == "never"
                     and not self.selfrag.critique_zero_shot),
                "calm.vote=weighted weighs each answer by its critique, but selfrag.critique_zero_shot=false scores "
                "no zero-shot answer; set selfrag.critique_zero_shot: true, or calm.vote: majority")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def eval_languages(self) -> tuple[str, ...]:
        return self.eval.languages or self.calm.languages

    @property
    def all_languages(self) -> tuple[str, ...]:
        """Training languages, then the languages only evaluated in: the questions are aligned across all."""
        return tuple(dict.fromkeys(self.calm.languages + self.eval_languages))


SECTIONS = {"model": ModelConfig, "generate": GenerateConfig, "selfrag": SelfRagConfig, "calm": CalmConfig,
            "pairs": PairsConfig, "train": TrainConfig, "data": DataConfig, "eval": EvalConfig}


def demo_files() -> dict[str, str]:
    """The demo questions shipped with the package, per language."""
    from calm_rag.qa import DEMO_QUESTIONS

    return {lang: str(DEMO_QUESTIONS / f"{lang}.json") for lang in ("en", "zh", "fr", "de", "it", "ja")}


# ---------------------------------------------------------------- distillation (calm-rag selfrag distill)


@dataclass(frozen=True)
class DistillConfig:
    """One distillation run: teacher/student model, data, labelling and SFT settings."""

    data: dict[str, str] = option("training QA files per language {lang: path} (CALM JSON, X-CSR or MedQA JSONL)")
    index: str = option("index folder the passages come from (calm-rag index build)")
    model: str = option("the verbalised teacher and the base of the student: packaged name, folder or hub id",
                        DEFAULT_GENERATOR)
    embedder: str | None = option("embedder of the index (default: the one its manifest names)", None)
    dataset: str = option("dataset name in question ids (default: from the file path)", "")
    langs: tuple[str, ...] = option("languages to distil, each a key of data", ("en",))
    holdout: int = option("the first N questions (by position, every language) are kept out for measuring", 0)
    max_questions: int | None = option("label at most N questions per language after the holdout (None: all)",
                                       None)
    top_k: int = option("passages per retrieved question (one example per passage)", 3)
    retrieval: str = option("critic: the verbalised critic's argmax decides retrieval; always: every question "
                            "retrieves", "critic")
    max_new_tokens: int = option("tokens the teacher writes per answer", 96)
    temperature: float = option("teacher sampling temperature (0: greedy)", 0.0)
    only_correct: bool = option("train only on examples whose answer letter is the gold letter", False)
    out: str = option("output folder (labelled data, checkpoints, merged model)", "runs/distill")
    steps: int = option("SFT optimizer steps", 200)
    learning_rate: float = option("AdamW learning rate", 2e-4)
    batch_size: int = option("examples per device step", 4)
    grad_accum: int = option("gradient accumulation steps", 1)
    max_length: int = option("max tokens per example; longer passages are cut from their end", 1024)
    lora_r: int = option("LoRA rank", 16)
    lora_alpha: int = option("LoRA alpha", 32)
    lora_dropout: float = option("LoRA dropout", 0.05)
    lora_targets: str = option("LoRA target modules: all-linear or a comma list such as q_proj,v_proj", "all-linear")
    save_steps: int = option("checkpoint every N steps (a rerun resumes from the last one)", 50)
    seed: int = option("seed of teacher sampling and SFT", 0)
    device: str | None = option("cpu, cuda or None for automatic", None)

    def __post_init__(self) -> None:
        require(isinstance(self.data, Mapping) and bool(self.data),
                "distill.data is empty; map each language to its QA file, e.g. en: ../shared/data/xcsqa/train/en.json")
        langs = (self.langs,) if isinstance(self.langs, str) else tuple(self.langs)
        if len(langs) == 1 and "," in langs[0]:
            langs = tuple(x.strip() for x in langs[0].split(",") if x.strip())
        try:
            langs = tuple(check_lang(x, "distill.langs") for x in langs)
            data = {check_lang(k, "distill.data"): str(v) for k, v in self.data.items()}
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        object.__setattr__(self, "langs", langs)
        object.__setattr__(self, "data", data)
        require(len(langs) >= 1, "distill.langs is empty; list at least one language")
        require(len(set(langs)) == len(langs), f"distill.langs repeats a language: {langs}")
        missing = [x for x in langs if x not in data]
        require(not missing, f"distill.data has no file for {missing}; add them or drop them from distill.langs")
        require(bool(self.model), "distill.model is empty; name a model, e.g. qwen2.5-coder-0.5b-instruct")
        require(bool(self.index), "distill.index is empty; give an index folder, e.g. indexes/demo")
        require(bool(self.out), "distill.out is empty; give an output folder")
        require(self.holdout >= 0, f"distill.holdout={self.holdout}; use 0 or more questions")
        require(self.max_questions is None or self.max_questions >= 1,
                f"distill.max_questions={self.max_questions}; use a positive number or leave it unset")
        require(self.top_k >= 1, f"distill.top_k={self.top_k}; use at least 1")
        require(self.retrieval in ("critic", "always"), f"distill.retrieval={self.retrieval!r}; use critic or always")
        require(self.max_new_tokens >= 1, f"distill.max_new_tokens={self.max_new_tokens}; use at least 1")
        require(self.temperature >= 0, f"distill.temperature={self.temperature}; use a value >= 0")
        require(self.steps >= 1, f"distill.steps={self.steps}; use at least 1")
        require(self.learning_rate > 0, f"distill.learning_rate={self.learning_rate}; use a positive value")
        require(self.batch_size >= 1 and self.grad_accum >= 1, "distill.batch_size and distill.grad_accum must be >= 1")
        require(self.max_length >= 64, f"distill.max_length={self.max_length}; use at least 64 tokens")
        require(self.lora_r >= 1 and self.lora_alpha >= 1, "distill.lora_r and distill.lora_alpha must be >= 1")
        require(0 <= self.lora_dropout < 1, f"distill.lora_dropout={self.lora_dropout}; use a value in [0, 1)")
        require(bool(str(self.lora_targets).strip()), "distill.lora_targets is empty; use all-linear or q_proj,v_proj")
        require(self.save_steps >= 1, f"distill.save_steps={self.save_steps}; use at least 1")
        require(self.device in (None, "cpu", "cuda") or str(self.device).startswith("cuda:"),
                f"distill.device={self.device!r}; use cpu, cuda, cuda:N or leave it unset")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


# ---------------------------------------------------------------- indexes (calm-rag index build, search)


@dataclass(frozen=True)
class ChunkConfig:
    """How documents become passages; sizes are in embedder tokens."""

    max_tokens: int = field(default=200, metadata={"help": "largest chunk, in embedder tokens (prompt excluded)"})
    overlap_tokens: int = field(default=32, metadata={"help": "tokens shared by consecutive chunks of a document"})
    cjk_langs: tuple[str, ...] = field(default=CJK_LANGS, metadata={
        "help": "languages split at 。！？ before spaces (no spaces between their sentences)"})
    embed_title: bool = field(default=True, metadata={
        "help": "prefix the title to a chunk's embedded text when the chunk does not already contain it"})

    def __post_init__(self) -> None:
        if self.max_tokens < 8:
            raise ValueError(f"chunk max_tokens={self.max_tokens} is too small; use at least 8 (typically 128-400)")
        if not 0 <= self.overlap_tokens < self.max_tokens:
            raise ValueError(f"chunk overlap_tokens={self.overlap_tokens} must be >= 0 and smaller than "
                             f"max_tokens={self.max_tokens}; lower it (typically max_tokens / 8)")
        object.__setattr__(self, "cjk_langs", tuple(self.cjk_langs))
        for code in self.cjk_langs:
            check_lang(code, "chunk cjk_langs")


@dataclass(frozen=True)
class IndexConfig:
    """How an index is built (chunking included)."""

    factory: str = field(default="Flat", metadata={
        "help": "FAISS index_factory string: Flat (exact), HNSW32, IVF256,PQ16, ... (inner product)"})
    chunk: ChunkConfig = field(default_factory=ChunkConfig, metadata={"help": "chunking settings"})
    batch_size: int = field(default=64, metadata={"help": "chunks per embedder forward pass"})
    shard_size: int = field(default=512, metadata={
        "help": "chunks per checkpoint shard (--checkpoint): an interrupted build loses at most one shard of work, "
                "about 10-20 s on a laptop CPU with the default embedder"})
    train_size: int = field(default=65536, metadata={
        "help": "vectors sampled to train IVF/PQ indexes (39-256 per centroid is typical)"})
    ef_construction: int = field(default=80, metadata={"help": "HNSW build-time beam width"})
    seed: int = field(default=0, metadata={"help": "seed of the training sample"})
    use_gpu: bool = field(default=True, metadata={"help": "build on FAISS GPUs when faiss sees any"})

    def __post_init__(self) -> None:
        if isinstance(self.chunk, Mapping):
            object.__setattr__(self, "chunk", ChunkConfig(**self.chunk))
        if not self.factory or not self.factory.strip():
            raise ValueError("index factory is empty; use a FAISS index_factory string such as Flat or HNSW32")
        for name in ("batch_size", "shard_size", "train_size", "ef_construction"):
            if getattr(self, name) < 1:
                raise ValueError(f"index {name}={getattr(self, name)} must be >= 1")
        if self.shard_size < self.batch_size:
            raise ValueError(f"index shard_size={self.shard_size} is smaller than batch_size={self.batch_size}; "
                             "make shard_size a multiple of batch_size")


@dataclass(frozen=True)
class RetrieveConfig:
    """Search-time settings."""

    k: int = field(default=5, metadata={"help": "passages per query"})
    nprobe: int = field(default=16, metadata={"help": "IVF lists visited per query (IVF indexes)"})
    ef_search: int = field(default=64, metadata={"help": "HNSW search beam width (raised to k when smaller)"})
    batch_size: int = field(default=64, metadata={"help": "queries per embedder forward pass"})
    # FAISS brings its own OpenMP runtime: under OMP_WAIT_POLICY=ACTIVE its idle worker spins on a core the
    # generator needs (the 1.5B's retrieval evaluation ran 2x slower, measured), and a few queries gain nothing
    search_threads: int = field(default=1, metadata={"help": "OpenMP threads of a FAISS search (0: FAISS's default, "
                                                             "every core)"})

    def __post_init__(self) -> None:
        for name in ("k", "nprobe", "ef_search", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"retrieve {name}={getattr(self, name)} must be >= 1")
        if self.search_threads < 0:
            raise ValueError(f"retrieve search_threads={self.search_threads} must be >= 0 (0: FAISS's default)")
