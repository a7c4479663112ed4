"""Distil the verbalised critic into a small Self-RAG model with its own reflection tokens.

Any instruct model can play Self-RAG through verbalised critic prompts (`rag.SelfRag` in verbalised
mode), but every answer then costs one generation plus several critic passes. This module turns
those critiques into training data and fine-tunes the same model to write the reflection tokens
itself, so `SelfRag` picks native mode for it (`rag.has_reflection_tokens`) and scores a passage
from the logits of one generation.

Two resumable stages, one output folder:
1. label: for each training question (held-out positions skipped), the verbalised critic decides
   retrieval; the model answers once per retrieved passage (or once without one) and the critic
   scores relevance, support and utility. Each probability table becomes hard labels by argmax
   and the example is rendered in Self-RAG's format with the passage included:
   `[Retrieval]<paragraph>title\\ntext</paragraph>[Relevant]answer[Fully supported][Utility:5]`
   or `[No Retrieval]answer[Utility:4]`, after the prompt `format_prompt(instruction)`.
2. train: the reflection tokens and paragraph tags become special tokens (new rows initialised
   to the mean of the rows of the pieces they used to split into), then LoRA SFT with trl
   (`train.train_sft`, beside DPO), the new tokens' input and output rows trainable (peft `trainable_token_indices`, tied or not).
   As in Self-RAG, the loss skips the prompt and the passage text inside <paragraph>..</paragraph>
   (the tags themselves are learned). The adapter is merged into a plain model folder.

Folder layout (`out`):
  distill.json            config, versions, counts and seconds per stage
  labelled.jsonl          one `Example` per line; a question's examples are appended together, so
                          a restart skips finished questions and redoes a half-written one
  sft/run.json            what the checkpoints were made from (examples hash, model, LoRA shape)
  sft/examples.jsonl      token ids and labels (-100 outside the loss) fed to trl
  sft/checkpoints/        Trainer checkpoints; a rerun resumes from the last one
  model/                  the merged model + tokenizer (reflection tokens as special tokens):
                          `AutoModelForCausalLM.from_pretrained(out/model)`, `load_generator(out/model)`;
                          `model/distill.json` says what it was distilled from
The first `holdout` questions of each language (by position) are never labelled, so
`scripts/bench_distill.py` can measure the model on them.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calm_rag import selfrag
from calm_rag.config import ConfigError, DistillConfig
from calm_rag.records import Critique, JsonlAppender, Question, atomic_write_text, read_jsonl, write_jsonl
from calm_rag.train import SftResult

log = logging.getLogger(__name__)

LABEL_GROUPS: dict[str, tuple[str, ...]] = {
    "retrieval": (selfrag.RETRIEVAL, selfrag.NO_RETRIEVAL),
    "relevance": selfrag.RELEVANCE_TOKENS,
    "support": selfrag.SUPPORT_TOKENS,
    "utility": selfrag.UTILITY_TOKENS,
}
# settings that change what a labelled example says: a labelled.jsonl made with others is refused
LABEL_KEYS = ("model", "index", "embedder", "data", "dataset", "langs", "holdout", "top_k", "retrieval",
              "max_new_tokens", "temperature", "seed")


# ---------------------------------------------------------------- questions


def load_pools(cfg: DistillConfig) -> dict[str, list[Question]]:
    """The configured languages' questions, aligned by position (mismatches are logged, not dropped)."""
    from calm_rag.qa import load_parallel

    return load_parallel({lang: cfg.data[lang] for lang in cfg.langs}, dataset=cfg.dataset or None, drop=False).by_lang


def distill_units(cfg: DistillConfig, pools: Mapping[str, list[Question]] | None = None) -> list[tuple[int, Question]]:
    """(position, question) units to label: positions after the holdout, languages in config order."""
    pools = pools or load_pools(cfg)
    n = min(len(qs) for qs in pools.values())
    if cfg.holdout >= n:
        raise ConfigError(f"distill.holdout={cfg.holdout} keeps out all {n} questions; lower it")
    stop = n if cfg.max_questions is None else min(n, cfg.holdout + cfg.max_questions)
    return [(i, pools[lang][i]) for i in range(cfg.holdout, stop) for lang in cfg.langs]


def holdout_units(cfg: DistillConfig, limit: int | None = None,
                  pools: Mapping[str, list[Question]] | None = None) -> list[tuple[int, Question]]:
    """The held-out (position, question) units, at most `limit` positions, for measuring the result."""
    pools = pools or load_pools(cfg)
    stop = cfg.holdout if limit is None else min(cfg.holdout, limit)
    return [(i, pools[lang][i]) for i in range(stop) for lang in cfg.langs]


# ---------------------------------------------------------------- labels and rendering


def argmax_token(probs: Mapping[str, float], tokens: Sequence[str]) -> str | None:
    """The most probable token of a group (ties: the first in group order); None when all are missing/zero."""
    values = [float(probs.get(t) or 0.0) for t in tokens]
    if max(values) <= 0.0:
        return None
    return tokens[values.index(max(values))]


def hard_labels(probs: Mapping[str, float], retrieved: bool) -> dict[str, str | None]:
    """Argmax labels of a critic's probability table. Without a passage there is no relevance or
    support to judge, so those are None; `retrieved` fixes the retrieval label to what was done."""
    labels = {group: argmax_token(probs, tokens) for group, tokens in LABEL_GROUPS.items()}
    labels["retrieval"] = selfrag.RETRIEVAL if retrieved else selfrag.NO_RETRIEVAL
    if not retrieved:
        labels["relevance"] = labels["support"] = None
    return labels


def labels_critique(labels: Mapping[str, str | None]) -> Critique:
    """A Critique whose expected values map back onto exactly these tokens in selfrag.critique_tokens."""
    rel, sup, use = labels.get("relevance"), labels.get("support"), labels.get("utility")
    sup_value = {selfrag.FULLY_SUPPORTED: 1.0, selfrag.PARTIALLY_SUPPORTED: 0.5, selfrag.NO_SUPPORT: 0.0}
    return Critique(rel=None if rel is None else float(rel == selfrag.RELEVANT),
                    sup=None if sup is None else sup_value[sup],
                    use=None if use is None else (selfrag.UTILITY_TOKENS.index(use) - 2) / 2)


def render_example(answer: str, labels: Mapping[str, str | None], passage=None,
                   extra_special: Sequence[str] = ()) -> str:
    """The Self-RAG training sequence after the prompt, passage included (selfrag.render_output)."""
    retrieved = labels.get("retrieval") == selfrag.RETRIEVAL and passage is not None
    return selfrag.render_output(answer, labels_critique(labels), passage, retrieved=retrieved,
                                 include_passage=True, extra_special=extra_special)


@dataclass(frozen=True)
class Example:
    """One labelled training example: a question, at most one passage, the teacher's answer and labels."""

    question_id: str
    lang: str
    position: int  # the question's position in its file (after alignment)
    slot: int  # the example's number within its question
    of: int  # examples of this question; the question is done when all are on disk
    prompt: str  # selfrag.format_prompt(instruction), no passage
    output: str  # the Self-RAG sequence, passage included
    answer: str  # the answer alone ("" when the teacher wrote nothing usable)
    letter: str | None
    gold: str | None
    labels: dict[str, str | None] = field(default_factory=dict)
    probs: dict[str, float] = field(default_factory=dict)  # the critic's table the labels come from
    passage_id: str | None = None
    completed: bool = False  # the answer's letter came from SelfRag's answer-cue step (cue and letter appended)


def critic_tables(rag, question: Question, candidates: Sequence[Any]) -> list[dict[str, float]]:
    """The critic's probability table per candidate (relevance, support, utility), as `rag.SelfRag`
    scored it (`Candidate.probs`); `question` and `rag` are kept for callers' symmetry."""
    missing = [i for i, c in enumerate(candidates) if not getattr(c, "probs", None)]
    if missing:
        raise ValueError(f"candidate(s) {missing} of question {question.id} carry no critique table; "
                         f"answer with rag.SelfRag (it keeps Candidate.probs)")
    return [dict(c.probs) for c in candidates]


def label_group(rag, units: Sequence[tuple[int, Question]], retrieval: str = "critic") -> list[Example]:
    """Answer a group of questions (one position in every language) with the verbalised SelfRag in
    one batched pass (`answer_many`) and turn each critique into examples."""
    questions = [q for _, q in units]
    decisions, needs = [], []
    for _, p_ret in rag.retrieval_decision(questions):
        need = {} if p_ret is None else {selfrag.RETRIEVAL: p_ret, selfrag.NO_RETRIEVAL: 1.0 - p_ret}
        wants = retrieval == "always" or argmax_token(need, LABEL_GROUPS["retrieval"]) == selfrag.RETRIEVAL
        decisions.append((wants, p_ret))
        needs.append(need)
    answers = rag.answer_many(questions, n=1, decisions=decisions)
    out = []
    for (position, question), answer, need, (wants, _) in zip(units, answers, needs, decisions):
        cands = answer.samples[0]
        tables = critic_tables(rag, question, cands)
        prompt = selfrag.format_prompt(selfrag.question_instruction(question))
        for slot, (cand, table) in enumerate(zip(cands, tables)):
            probs = {**table, **need}
            labels = hard_labels(probs, retrieved=cand.hit is not None)
            passage = cand.hit.passage if cand.hit else None
            out.append(Example(
                question_id=question.id, lang=question.lang, position=position, slot=slot, of=len(cands),
                prompt=prompt, output=render_example(cand.answer, labels, passage, rag.extra_special),
                answer=cand.answer.strip(), letter=cand.letter, gold=question.gold, labels=labels,
                probs={k: round(float(v), 6) for k, v in probs.items()},
                passage_id=passage.id if passage else None, completed=bool(getattr(cand, "completed", False))))
        if wants and not answer.hits:
            log.warning("%s/%s: retrieval wanted but the index returned no passage", question.id, question.lang)
    return out


def read_examples(path: str | Path) -> list[Example]:
    return list(read_jsonl(path, Example))


def label_units(rag, units: Sequence[tuple[int, Question]], out_path: str | Path, retrieval: str = "critic",
                on_group: Callable[[int], None] | None = None) -> list[Example]:
    """Label every unit, one position (all its languages) per batch; finished positions are skipped.

    A position's examples are appended together after its batch. One cut short by an interrupt
    (a language missing, or fewer than `of` examples of a question) is dropped on restart and
    redone as the same batch, so a resumed run writes the same records as an uninterrupted one.
    """
    from tqdm.auto import tqdm

    out_path = Path(out_path)
    groups: dict[int, list[tuple[int, Question]]] = {}
    for i, q in units:
        groups.setdefault(i, []).append((i, q))
    if out_path.exists():
        on_disk: dict[int, list[Example]] = {}
        for ex in read_examples(out_path):
            on_disk.setdefault(ex.position, []).append(ex)
        complete = {pos: exs for pos, exs in on_disk.items() if _complete(exs, groups.get(pos))}
        if len(complete) != len(on_disk):
            log.warning("%s: dropping %d half-labelled position(s) left by an interrupted run",
                        out_path, len(on_disk) - len(complete))
            write_jsonl(out_path, [e for exs in complete.values() for e in exs])
        todo = [g for pos, g in groups.items() if pos not in complete]
    else:
        todo = list(groups.values())
    log.info("labelling: %d position(s) done, %d to go (%d language(s) each)",
             len(groups) - len(todo), len(todo), len(next(iter(groups.values()), [])))
    with JsonlAppender(out_path) as app:
        for n, group in enumerate(tqdm(todo, desc="labelling", unit="position", disable=not todo)):
            for ex in label_group(rag, group, retrieval):
                app.append(ex)
            if on_group:
                on_group(n)
    return read_examples(out_path)


def _complete(examples: list[Example], group: list[tuple[int, Question]] | None) -> bool:
    """Every question of the position is on disk with all of its examples."""
    if group is None:  # a position no longer asked for (max_questions lowered): keep it
        return True
    per_q: dict[tuple[str, str], list[Example]] = {}
    for ex in examples:
        per_q.setdefault((ex.question_id, ex.lang), []).append(ex)
    wanted = {(q.id, q.lang) for _, q in group}
    return set(per_q) == wanted and all(len(v) == v[0].of for v in per_q.values())


def usable(ex: Example, only_correct: bool) -> bool:
    if not ex.answer:
        return False
    return not only_correct or ex.gold is None or ex.letter == ex.gold


# ---------------------------------------------------------------- SFT


def train_sft(labelled: str | Path, cfg: DistillConfig, out_dir: str | Path, resume: bool = True) -> SftResult:
    """LoRA SFT of cfg.model on the usable labelled examples (`train.train_sft`); the merged model lands in
    `out_dir/model`."""
    from calm_rag.train import train_sft as sft_on

    examples = read_examples(labelled)
    kept = [(ex.prompt, ex.output) for ex in examples if usable(ex, cfg.only_correct)]
    return sft_on(kept, cfg, out_dir, resume=resume, unusable=len(examples) - len(kept), source=str(labelled))


# ---------------------------------------------------------------- the whole job


def make_teacher(cfg: DistillConfig, generator=None, retriever=None):
    """The verbalised SelfRag that labels: greedy (or cfg.temperature) single answers, k passages."""
    from calm_rag.config import GenerateConfig, SelfRagConfig
    from calm_rag.generate import load_generator
    from calm_rag.retrieve import load_retriever
    from calm_rag.rag import SelfRag

    if not Path(cfg.index).is_dir():
        raise ConfigError(f"distill.index={cfg.index} does not exist; build it with calm-rag index build")
    gen = generator or load_generator(cfg.model, device=cfg.device)
    retriever = retriever or load_retriever(cfg.index, cfg.embedder)
    scfg = SelfRagConfig(retrieval="adaptive", threshold=0.5, top_k=cfg.top_k, critique="verbalised", index=cfg.index)
    gcfg = GenerateConfig(n=1, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    return SelfRag(gen, retriever, scfg, gcfg)


class Distillation:
    """One output folder; `label()` and `train()` are resumable and recorded in distill.json."""

    def __init__(self, cfg: DistillConfig):
        self.cfg = cfg
        self.dir = Path(cfg.out)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.dir / "distill.json"
        self.manifest = json.loads(self.manifest_path.read_text()) if self.manifest_path.exists() else {}
        old, new = self.manifest.get("config"), cfg.to_dict()
        if old:
            diff = [k for k in LABEL_KEYS if old.get(k) != new.get(k)]
            if diff and (self.dir / "labelled.jsonl").exists():
                raise ConfigError(f"{self.manifest_path}: labelled with other {diff} "
                                  f"({[old.get(k) for k in diff]} vs {[new.get(k) for k in diff]}); "
                                  f"use another out folder or the same settings")
        self.manifest["config"] = new
        self.manifest.setdefault("stages", {})
        from calm_rag.records import package_versions

        self.manifest.setdefault("versions", package_versions())
        self._save()

    def _save(self) -> None:
        atomic_write_text(self.manifest_path, json.dumps(self.manifest, indent=2, ensure_ascii=False) + "\n")

    @property
    def labelled_path(self) -> Path:
        return self.dir / "labelled.jsonl"

    def label(self, rag=None, on_group: Callable[[int], None] | None = None) -> list[Example]:
        started = time.time()
        units = distill_units(self.cfg)
        rag = rag or make_teacher(self.cfg)
        examples = label_units(rag, units, self.labelled_path, self.cfg.retrieval, on_group)
        counts: dict[str, Any] = {"questions": len(units), "examples": len(examples)}
        for group in LABEL_GROUPS:
            tally: dict[str, int] = {}
            for ex in examples:
                key = ex.labels.get(group) or "-"
                tally[key] = tally.get(key, 0) + 1
            counts[group] = tally
        counts["correct"] = sum(ex.letter is not None and ex.letter == ex.gold for ex in examples)
        counts["completed"] = sum(ex.completed for ex in examples)
        self.manifest["stages"]["label"] = {"seconds": round(time.time() - started, 1), **counts}
        self._save()
        return examples

    def train(self, resume: bool = True) -> SftResult:
        if not self.labelled_path.is_file():
            raise ConfigError(f"{self.labelled_path} is missing; run the label stage first")
        result = train_sft(self.labelled_path, self.cfg, self.dir, resume=resume)
        self.manifest["stages"]["train"] = {"seconds": round(result.seconds, 1), "steps": result.steps,
                                            "final_loss": result.final_loss, "examples": result.examples,
                                            "dropped": result.dropped, "model": str(result.model_dir)}
        self._save()
        return result

    def run(self, stage: str = "all", resume: bool = True) -> dict[str, Any]:
        if stage not in ("label", "train", "all"):
            raise ConfigError(f"stage={stage!r}; use label, train or all")
        if stage in ("label", "all"):
            self.label()
            gc.collect()  # the teacher goes before the student loads
        if stage in ("train", "all"):
            self.train(resume=resume)
        return self.manifest["stages"]


def distill(cfg: DistillConfig, stage: str = "all", resume: bool = True) -> dict[str, Any]:
    """Label and/or train as configured; returns the stages' counts and timings."""
    return Distillation(cfg).run(stage, resume)
