"""The llama.cpp backend: GGUF weights on the CPU, many sequences decoded together.

Why this shape (measured in scripts/bench_engine.py): the CALM stages are prompt-bound, so
- the prompt of each request is computed once and its KV cells are shared by its n samples
  (`llama_memory_seq_cp` over one unified KV cache), and critic prompts go several to a batch;
- sequences join and leave the running batch as they start and finish (continuous batching), so
  a long answer does not hold the others back;
- sampling happens here, in numpy, from the full logits: exact temperature + top-p, and each
  sequence draws from its own generator seeded by (call seed, prompt text, sample), so a prompt
  gives the same samples alone, in any batch, or after a resume.

Tokenization is the HF tokenizer's (the same ids as the transformers backend); llama.cpp only
runs the weights. LoRA adapters are applied at run time (converted once to GGUF); an adapter that
changes token rows is merged into its base and converted once. Left out: GPU offload (the CUDA
path is the transformers backend), grammar/constrained decoding.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calm_rag.config import GenerateConfig
from calm_rag.gguf_export import FORMAT_VERSION
from calm_rag.generate import TokenizerGenerator, cpu_threads, sequence_seed
from calm_rag.models import ModelError, cache_home, model_lock, packaged_gguf, resolve_model
from calm_rag.records import file_sha256

log = logging.getLogger(__name__)

_LOG_CALLBACK = None  # kept referenced: llama.cpp calls it from C


def _llama():
    """Import llama_cpp once, quietly (its own logger prints to stderr), OpenMP threads passive."""
    global _LOG_CALLBACK
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning threads starve a shared 2-core machine
    try:
        import llama_cpp
    except ImportError as exc:
        raise ModelError("llama-cpp-python is not installed; `make venv` builds it, or use --backend transformers"
                         ) from exc
    if _LOG_CALLBACK is None:
        _LOG_CALLBACK = llama_cpp.llama_log_callback(lambda level, text, data: None)
        llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
    return llama_cpp


# ---------------------------------------------------------------- weights: resolve, convert once, verify


def _slug(spec: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in Path(spec).name or spec)[:60]


def _folder_digest(folder: Path) -> str:
    """Identity of a model folder: its config and its weight files' sizes and hashes of their heads."""
    h = hashlib.sha256()
    for path in sorted(folder.glob("*.json")) + sorted(folder.glob("*.safetensors")):
        h.update(path.name.encode())
        h.update(str(path.stat().st_size).encode())
        with path.open("rb") as fh:
            h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def verify_gguf(path: Path) -> None:
    """A converted GGUF is used only if it matches the checksum recorded when it was written."""
    meta_path = path.with_name(path.name + ".json")
    if not path.is_file() or not meta_path.is_file():
        raise ModelError(f"{path}: converted model is missing; delete {path.parent} and rerun to convert it again")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if path.stat().st_size != meta.get("bytes") or file_sha256(path) != meta.get("sha256"):
        raise ModelError(f"{path}: converted model is truncated or corrupt (checksum mismatch); delete it "
                         f"(rm {path}) and rerun to convert it again")


def _convert_once(out: Path, key: str, build) -> Path:
    """Build `out` under a lock unless a verified copy is there; its checksum goes beside it."""
    with model_lock(key):
        if out.is_file() and out.with_name(out.name + ".json").is_file():
            verify_gguf(out)
            return out
        log.info("converting to GGUF for llama.cpp: %s (once; cached)", out)
        build(out)
        meta = {"bytes": out.stat().st_size, "sha256": file_sha256(out)}
        out.with_name(out.name + ".json").write_text(json.dumps(meta) + "\n")
    return out


def resolve_gguf(spec: str, precision: str = "q8_0") -> tuple[Path, Path]:
    """(HF folder for the tokenizer, GGUF weights) for a model spec."""
    from calm_rag.gguf_export import export_model
    from calm_rag.models import PACKAGED

    if precision == "shipped":
        if spec not in PACKAGED or PACKAGED[spec].fmt != "gguf":
            raise ModelError(f"precision 'shipped' needs a packaged GGUF generator, not {spec!r}; use q8_0, f16 or f32")
        return Path(resolve_model(spec)), packaged_gguf(spec)
    folder = resolve_model(spec)
    if isinstance(folder, str):  # a hub id: download the snapshot the transformers backend would read
        try:
            from huggingface_hub import snapshot_download

            folder = snapshot_download(folder)
        except Exception as exc:  # noqa: BLE001 - hub errors come in many types
            from calm_rag.models import hub_hint

            raise ModelError(hub_hint(spec)) from exc
    folder = Path(folder)
    prec = precision
    out = cache_home() / "gguf" / f"{_slug(str(folder))}-{_folder_digest(folder)}-{prec}-v{FORMAT_VERSION}.gguf"
    return folder, _convert_once(out, out.stem, lambda path: export_model(folder, path, prec))


def resolve_adapter(adapter: str, base_folder: Path, base_spec: str, precision: str = "q8_0") -> tuple[str, Path]:
    """("lora", GGUF LoRA) applied at run time, or ("merged", GGUF of base + adapter) for token-row adapters."""
    from calm_rag.gguf_export import adapter_needs_merge, export_lora, export_model

    folder = Path(adapter).expanduser()
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelError(f"{folder}: no adapter_model.safetensors; give the adapter folder `calm-rag calm train` "
                         f"wrote (RUN/train/adapter)")
    digest = file_sha256(weights)[:16]
    root = cache_home() / "gguf" / "adapters"
    if not adapter_needs_merge(folder):
        out = root / f"lora-{digest}-v{FORMAT_VERSION}.gguf"
        return "lora", _convert_once(out, out.stem, lambda path: export_lora(folder, base_folder, path))

    def merge(path: Path) -> None:
        import tempfile

        from calm_rag.models import load_causal_lm

        model, tokenizer = load_causal_lm(base_spec, adapter=str(folder), device="cpu")
        merged = model.merge_and_unload()
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            merged.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            export_model(Path(tmp), path, "q8_0" if precision == "shipped" else precision)

    root.mkdir(parents=True, exist_ok=True)
    out = root / f"merged-{digest}-{precision}-v{FORMAT_VERSION}.gguf"
    return "merged", _convert_once(out, out.stem, merge)


# ---------------------------------------------------------------- the engine


@dataclass
class _Seq:
    """One sample being decoded."""

    request: int
    sample: int
    rng: np.random.Generator
    pos: int  # the next position: cells hold positions below it (the last sampled token is not in yet)
    prompt: list[int] = field(default_factory=list)
    fed: int = 0  # positions whose cells are in the KV cache
    tokens: list[int] = field(default_factory=list)
    table: dict[str, float] = field(default_factory=dict)
    seen_groups: set[int] = field(default_factory=set)
    done: bool = False


class LlamaCppGenerator(TokenizerGenerator):
    """GGUF weights in llama.cpp behind the `Generator` interface."""

    backend = "llama.cpp"

    def __init__(self, gguf_path: Path, tokenizer, name: str = "", threads: int = 0, n_ctx: int = 24576,
                 max_seqs: int = 32, n_batch: int = 512, lora: Path | None = None, generation_eos=None,
                 cache_seqs: int = 64, cache_cells: int = 12288):
        super().__init__(tokenizer, name, generation_eos)
        lib = self.lib = _llama()
        self.gguf_path = Path(gguf_path)
        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = 0
        self._model = lib.llama_model_load_from_file(str(self.gguf_path).encode(), mparams)
        if not self._model:
            raise ModelError(f"{self.gguf_path}: llama.cpp cannot load this GGUF (corrupt, truncated or an "
                             f"unsupported architecture); delete it to convert again, or use --backend transformers")
        vocab = lib.llama_model_get_vocab(self._model)
        self.n_vocab = lib.llama_vocab_n_tokens(vocab)
        if self.n_vocab < len(tokenizer):
            raise ModelError(f"{self.gguf_path}: the GGUF has {self.n_vocab} tokens but the tokenizer {len(tokenizer)}; "
                             f"the weights and the tokenizer are from different models")
        self.n_ctx_train = lib.llama_model_n_ctx_train(self._model)
        self.max_seqs, self.n_batch = max_seqs, n_batch
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = cparams.n_ubatch = n_batch
        cparams.n_seq_max = max_seqs + 1 + cache_seqs  # working sequences, a shared-prefix root, the prefix cache
        cparams.n_threads = cparams.n_threads_batch = cpu_threads(threads)
        cparams.kv_unified = True
        cparams.no_perf = True
        self._ctx = lib.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            raise ModelError(f"{self.gguf_path}: llama.cpp could not create a context (n_ctx={n_ctx}); "
                             f"lower the context or free memory")
        self.n_ctx = lib.llama_n_ctx(self._ctx)
        self._mem = lib.llama_get_memory(self._ctx)
        self._batch = lib.llama_batch_init(n_batch, 0, 1)
        self._root = max_seqs
        self.cache = PrefixCache(lib, self._mem, range(max_seqs + 1, max_seqs + 1 + cache_seqs), cache_cells)
        self._lora = None
        if lora is not None:
            self._lora = lib.llama_adapter_lora_init(self._model, str(lora).encode())
            if not self._lora:
                raise ModelError(f"{lora}: llama.cpp rejected the LoRA adapter; it was trained on another base "
                                 f"model (pass that model with --model) or is corrupt (delete it to convert again)")
            adapters = (lib.llama_adapter_lora_p_ctypes * 1)(self._lora)
            scales = (ctypes.c_float * 1)(1.0)
            if lib.llama_set_adapters_lora(self._ctx, adapters, 1, scales) != 0:
                raise ModelError(f"{lora}: llama.cpp could not apply the LoRA adapter")

    @classmethod
    def load(cls, spec: str, adapter: str | None = None, precision: str = "q8_0", threads: int = 0,
             **kwargs) -> LlamaCppGenerator:
        from transformers import AutoTokenizer, GenerationConfig

        folder, weights = resolve_gguf(spec, precision)
        lora = None
        if adapter:
            kind, path = resolve_adapter(adapter, folder, spec, precision)
            if kind == "merged":
                weights = path  # base + adapter in one file; the tokenizer stays the base's
            else:
                lora = path
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        try:
            eos = GenerationConfig.from_pretrained(str(folder)).eos_token_id
        except OSError:
            eos = None
        return cls(weights, tokenizer, spec, threads=threads, lora=lora, generation_eos=eos, **kwargs)

    def close(self) -> None:
        lib = self.lib
        if getattr(self, "_ctx", None):
            lib.llama_batch_free(self._batch)
            lib.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_lora", None):
            lib.llama_adapter_lora_free(self._lora)
            self._lora = None
        if getattr(self, "_model", None):
            lib.llama_model_free(self._model)
            self._model = None

    def __del__(self):  # pragma: no cover - interpreter shutdown order varies
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    # ------------------------------------------------------------ low level

    @property
    def context_limit(self) -> int:
        """Positions one sequence may use: the model's trained context, within the KV cache."""
        return min(self.n_ctx, self.n_ctx_train or self.n_ctx)

    def _check_length(self, ids: list[int]) -> None:
        """A prompt must leave room for one new token; answers stop where the context ends."""
        if not ids:
            raise ValueError("an empty prompt: nothing to generate from")
        if len(ids) + 1 > self.context_limit:
            raise ValueError(f"a prompt of {len(ids)} tokens exceeds the model's context of {self.context_limit} "
                             f"tokens; use fewer or shorter passages (-k, the index's chunk size)")

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> dict[int, int]:
        """Run (token, pos, seq, want_logits) entries in one llama_decode; returns entry index -> logits row."""
        lib, b = self.lib, self._batch
        rows = {}
        for i, (token, pos, seq, want) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i] = token, pos, 1
            b.seq_id[i][0] = seq
            b.logits[i] = 1 if want else 0
            if want:
                rows[i] = i
        b.n_tokens = len(entries)
        rc = lib.llama_decode(self._ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc}): the KV cache is full; lower generate.batch_size")
        return rows

    def _logits(self, i: int) -> np.ndarray:
        ptr = self.lib.llama_get_logits_ith(self._ctx, i)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def _prefill(self, jobs: list[tuple[int, list[int], int]]) -> dict[int, np.ndarray]:
        """Prompt tokens of several sequences, packed into batches of n_batch; the last token's logits each.

        A job is (seq, tokens, cells the sequence already holds). Whatever the prefix cache holds of a
        prompt's start is copied instead of computed; every prompt is offered to the cache afterwards.
        """
        out: dict[int, np.ndarray] = {}
        entries: list[tuple[int, int, int, bool]] = []
        owners: list[int] = []
        for seq, ids, start in jobs:
            start = max(start, self.cache.copy_prefix(ids, seq, start, len(ids) - 1))
            for pos in range(start, len(ids)):
                entries.append((ids[pos], pos, seq, pos == len(ids) - 1))
                owners.append(seq)
        for start in range(0, len(entries), self.n_batch):
            self.check_cancel()
            chunk = entries[start:start + self.n_batch]
            for i in self._decode(chunk):
                out[owners[start + i]] = self._logits(i)
        for seq, ids, _ in jobs:
            self.cache.keep(seq, ids)
        return out

    def _clear_working(self) -> None:
        """Drop every sequence but the prefix cache's."""
        for seq in range(self._root + 1):
            self.lib.llama_memory_seq_rm(self._mem, seq, -1, -1)

    # ------------------------------------------------------------ the Generator interface

    def generate_scored(self, prompts: Sequence[str], cfg: GenerateConfig, groups: Sequence[Sequence[str]],
                        n: int | None = None, seed: int | None = None
                        ) -> tuple[list[list[str]], list[list[dict[str, float]]]]:
        """n samples per prompt with, per sample and token group, the group's probabilities at the first
        step where the sample wrote one of its tokens (softmax of the raw logits)."""
        n = cfg.n if n is None else n
        seed = cfg.seed if seed is None else seed
        if n > self.max_seqs:
            raise ValueError(f"generate.n={n} exceeds the {self.max_seqs} sequences llama.cpp decodes together")
        watched = [[self.tokenizer.convert_tokens_to_ids(t) for t in g] for g in groups]
        ids = [self.encode_ids(p) for p in prompts]
        for x in ids:
            self._check_length(x)
        seen: dict[str, int] = {}
        occurrence = []
        for p in prompts:
            occurrence.append(seen.get(p, 0))
            seen[p] = occurrence[-1] + 1
        eos = sorted(self.eos_ids())
        results: list[list[_Seq | None]] = [[None] * n for _ in prompts]
        pending = deque(sorted(range(len(prompts)), key=lambda i: (-len(ids[i]), i)))
        free = list(range(self.max_seqs))[::-1]
        active: dict[int, _Seq] = {}
        reserved: dict[int, int] = {}  # request -> KV cells it may fill (prompt + n answers)
        left: dict[int, int] = {}  # request -> samples still decoding
        width = max(n, min(self.max_seqs, cfg.batch_size))
        if self.observer is not None:
            self.observer.on_start(len(prompts) * n)
        self._clear_working()
        self.cache.keep_only(ids)  # a new round: cells no prompt here starts with would only slow attention
        try:
            while pending or active:
                self.check_cancel()
                admitted = []
                while pending and len(free) >= n and len(active) + n * (len(admitted) + 1) <= width:
                    r = pending[0]
                    need = len(ids[r]) + n * min(cfg.max_new_tokens, self.context_limit - len(ids[r]))
                    if sum(reserved.values()) + need > self.n_ctx - self.cache.max_cells and (active or admitted):
                        break
                    pending.popleft()
                    reserved[r], left[r] = need, n
                    admitted.append((r, [free.pop() for _ in range(n)]))
                if admitted:
                    first = self._prefill([(slots[0], ids[r], 0) for r, slots in admitted])
                    for r, slots in admitted:
                        for s, seq in enumerate(slots):
                            if s:
                                self.lib.llama_memory_seq_cp(self._mem, slots[0], seq, -1, -1)
                            rng = np.random.default_rng(sequence_seed(seed, prompts[r], occurrence[r], s))
                            active[seq] = _Seq(r, s, rng, len(ids[r]), prompt=ids[r], fed=len(ids[r]))
                            self._step(active[seq], first[slots[0]].copy(), cfg, eos, groups, watched, n)
                    self._retire(active, results, free, left, reserved)
                if not active:
                    continue
                seqs = sorted(active)
                rows = self._decode([(active[q].tokens[-1], active[q].pos - 1, q, True) for q in seqs])
                for i, q in enumerate(seqs):
                    active[q].fed = active[q].pos
                    self._step(active[q], self._logits(rows[i]), cfg, eos, groups, watched, n)
                self._retire(active, results, free, left, reserved)
        finally:
            self._clear_working()
        if self.observer is not None:
            self.observer.on_end()
        texts = [[self.clean(self.tokenizer.decode(s.tokens, skip_special_tokens=False)) for s in row] for row in results]
        tables = [[s.table for s in row] for row in results]
        return texts, tables

    def _step(self, seq: _Seq, logits: np.ndarray, cfg: GenerateConfig, eos: list[int],
              groups: Sequence[Sequence[str]], watched: list[list[int]], n: int) -> None:
        """Choose the next token of one sequence from its logits; record watched probabilities."""
        if cfg.min_new_tokens and len(seq.tokens) < cfg.min_new_tokens:
            logits[eos] = -np.inf
        token = sample_token(logits, cfg.temperature, cfg.top_p, seq.rng)
        for g, (names, gids) in enumerate(zip(groups, watched)):
            if g not in seq.seen_groups and token in gids:
                probs = softmax(logits)
                seq.table.update({name: float(probs[t]) for name, t in zip(names, gids)})
                seq.seen_groups.add(g)
        if token in eos:
            seq.done = True
            return
        seq.tokens.append(token)
        seq.pos += 1
        if self.observer is not None:
            text = self.clean(self.tokenizer.decode(seq.tokens, skip_special_tokens=False))
            self.observer.on_token(seq.request * n + seq.sample, text)
        if len(seq.tokens) >= cfg.max_new_tokens or seq.pos >= self.context_limit:
            seq.done = True

    def _retire(self, active: dict[int, _Seq], results, free: list[int], left: dict[int, int],
                reserved: dict[int, int]) -> None:
        """Finished sequences give their KV cells and slot back; a request's reservation ends with its last."""
        for q in [q for q, s in active.items() if s.done]:
            s = active.pop(q)
            results[s.request][s.sample] = s
            self.cache.keep(q, (s.prompt + s.tokens)[:s.fed])  # prompt + answer: the critic prompts start so
            self.lib.llama_memory_seq_rm(self._mem, q, -1, -1)
            free.append(q)
            left[s.request] -= 1
            if left[s.request] == 0:
                reserved.pop(s.request)

    def next_token_probs(self, prompts: Sequence[str], candidates: Sequence[str],
                         batch_size: int = 16) -> list[dict[str, float]]:
        """p(first token of each candidate | prompt), softmax over the whole vocabulary; every candidate
        key is returned (0.0 for one that encodes to no token).

        Critic prompts repeat long prefixes (one passage for its relevance and support questions, one
        question for its utility questions), so prompts sharing at least `SHARED_PREFIX` tokens are
        computed as one prefix whose KV cells every member copies, plus each member's own rest.
        """
        first_ids = self.first_token_ids(candidates)
        out: list[dict[str, float]] = [dict.fromkeys(candidates, 0.0) for _ in prompts]
        ids = [self.encode_ids(p) for p in prompts]
        for x in ids:
            self._check_length(x)
        width = max(1, min(batch_size, self.max_seqs))
        try:
            for shared, members in prefix_groups(ids, SHARED_PREFIX):
                self.check_cancel()
                for start in range(0, len(members), width):
                    chunk = members[start:start + width]
                    self._clear_working()
                    if shared:
                        self._prefill([(self._root, ids[chunk[0]][:shared], 0)])
                        for slot in range(len(chunk)):
                            self.lib.llama_memory_seq_cp(self._mem, self._root, slot, 0, shared)
                    logits = self._prefill([(slot, ids[i], shared) for slot, i in enumerate(chunk)])
                    for slot, i in enumerate(chunk):
                        probs = softmax(logits[slot])
                        out[i].update({c: float(probs[t]) for c, t in first_ids.items()})
        finally:
            self._clear_working()
        return out


SHARED_PREFIX = 48  # tokens; above a chat template's system preamble, below a passage or a question


class PrefixCache:
    """KV cells of recent prompts and answers, kept under sequence ids of their own.

    A prompt that starts like one of them copies those cells (`llama_memory_seq_cp` over the unified KV
    cache) instead of computing them: the critic prompts of a Self-RAG pass start with the passage and
    the answer the generate call has just computed. Least recently used entries go first; the cache
    holds at most `max_cells` cells, since every decoded token attends over all cells in use.
    """

    def __init__(self, lib, mem, seqs: range, max_cells: int):
        self.lib, self.mem, self.max_cells = lib, mem, max_cells
        self.free = list(seqs)[::-1]
        self.entries: OrderedDict[int, np.ndarray] = OrderedDict()
        self.reused = 0  # tokens copied instead of computed, for benchmarks and tests

    def longest(self, ids: Sequence[int]) -> tuple[int | None, int]:
        arr = np.asarray(ids, dtype=np.int64)
        best_seq, best = None, 0
        for seq, toks in self.entries.items():
            m = min(len(toks), len(arr))
            diff = np.flatnonzero(toks[:m] != arr[:m])
            common = int(diff[0]) if len(diff) else m
            if common > best:
                best_seq, best = seq, common
        return best_seq, best

    def copy_prefix(self, ids: Sequence[int], seq: int, start: int, limit: int) -> int:
        """Give `seq` the cached cells of ids[start:lcp] (lcp at most `limit`); returns where computing starts."""
        src, common = self.longest(ids)
        common = min(common, limit)
        if src is None or common < max(start + 1, SHARED_PREFIX):
            return start
        self.lib.llama_memory_seq_cp(self.mem, src, seq, start, common)
        self.entries.move_to_end(src)
        self.reused += common - start
        return common

    def keep(self, seq: int, ids: Sequence[int]) -> None:
        """Keep the cells of `seq` for positions < len(ids) under a cache id, unless already covered."""
        if len(ids) < SHARED_PREFIX or len(ids) > self.max_cells:
            return
        src, common = self.longest(ids)
        if common >= len(ids):
            self.entries.move_to_end(src)
            return
        while self.entries and (not self.free or self.cells() + len(ids) > self.max_cells):
            old, _ = self.entries.popitem(last=False)
            self.lib.llama_memory_seq_rm(self.mem, old, -1, -1)
            self.free.append(old)
        dst = self.free.pop()
        self.lib.llama_memory_seq_cp(self.mem, seq, dst, 0, len(ids))
        self.entries[dst] = np.asarray(ids, dtype=np.int64)

    def keep_only(self, prompts: Sequence[Sequence[int]]) -> None:
        """Drop the entries none of `prompts` shares a prefix of SHARED_PREFIX tokens with."""
        for seq in list(self.entries):
            toks = self.entries[seq]
            if not any(len(p) >= SHARED_PREFIX and len(toks) >= SHARED_PREFIX
                       and np.array_equal(toks[:SHARED_PREFIX], np.asarray(p[:SHARED_PREFIX])) for p in prompts):
                self.lib.llama_memory_seq_rm(self.mem, seq, -1, -1)
                self.free.append(seq)
                del self.entries[seq]

    def cells(self) -> int:
        return sum(len(t) for t in self.entries.values())  # shared cells count once per entry: an upper bound

    def clear(self) -> None:
        for seq in list(self.entries):
            self.lib.llama_memory_seq_rm(self.mem, seq, -1, -1)
            self.free.append(seq)
        self.entries.clear()


def prefix_groups(ids: Sequence[Sequence[int]], min_shared: int) -> list[tuple[int, list[int]]]:
    """Prompts (token lists) in groups that share a prefix of at least `min_shared` tokens:
    [(shared prefix length, member indices)]; a prompt sharing nothing is a group of its own with 0.
    Members keep at least one token of their own (its logits are the answer)."""
    order = sorted(range(len(ids)), key=lambda i: list(ids[i]))
    groups: list[tuple[int, list[int]]] = []
    for i in order:
        if groups:
            shared, members = groups[-1]
            prev = ids[members[-1]]
            lcp = next((j for j, (a, b) in enumerate(zip(prev, ids[i])) if a != b), min(len(prev), len(ids[i])))
            common = min(lcp, shared) if len(members) > 1 else lcp
            common = min(common, len(ids[i]) - 1, min(len(ids[m]) for m in members) - 1)
            if common >= min_shared:
                groups[-1] = (common, members + [i])
                continue
        groups.append((0, [i]))
    return groups


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max()
    e = np.exp(z)
    return e / e.sum()


def sample_token(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator,
                 k: int = 1024) -> int:
    """Greedy at temperature 0; else exact temperature + top-p (nucleus) sampling.

    The nucleus is cut from the top k logits when they hold the top_p mass (else from the full
    sort): the smallest prefix of the sorted distribution whose mass reaches top_p, renormalised.
    """
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    zmax = z.max()
    logz = zmax + np.log(np.exp(z - zmax).sum())
    k = min(k, z.shape[0])
    idx = np.argpartition(-z, k - 1)[:k]
    idx = idx[np.argsort(-z[idx], kind="stable")]
    probs = np.exp(z[idx] - logz)
    if probs.sum() < top_p:
        idx = np.argsort(-z, kind="stable")
        probs = np.exp(z[idx] - logz)
    keep = (np.cumsum(probs) - probs) < top_p
    probs = probs[keep]
    cdf = np.cumsum(probs)
    return int(idx[min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(cdf) - 1)])
