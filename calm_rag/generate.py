"""The `Generator` interface every stage talks to, and `load_generator`, which picks a backend.

Two backends hold the same HF tokenizer (so prompts tokenize the same on both) and differ in
what runs the weights:
- `transformers` (`backend_transformers.py`): fp32/bf16 torch, the CUDA path and the model DPO
  trains;
- `llama.cpp` (`backend_llamacpp.py`): GGUF weights (a packaged model as shipped, anything else
  converted once), many sequences decoded together over one unified KV cache, each prompt's
  prefix computed once for its n samples.

Callers never touch a backend's model object. The shell watches generation through an
`Observer` (tokens as they come, cancel), not by patching a model.
"""

from __future__ import annotations

import logging
import os
import threading
import zlib
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from calm_rag.config import BACKENDS, GenerateConfig

log = logging.getLogger(__name__)


class GenerationCancelled(Exception):
    """Raised inside a generate call once its observer says cancel."""


class Observer(Protocol):
    """What the shell hands a generator to watch a call: rows start, tokens arrive, rows end."""

    def on_start(self, rows: int) -> None: ...

    def on_token(self, row: int, text: str) -> None: ...

    def on_end(self) -> None: ...

    def cancelled(self) -> bool: ...


@runtime_checkable
class Generator(Protocol):
    """Everything rag, distillation, evaluation, the translator and the shell need of a model."""

    name: str
    backend: str
    observer: Observer | None

    def chat_prompt(self, user: str, system: str | None = None) -> str: ...

    def chat_turns(self, messages: Sequence[dict[str, str]]) -> str: ...

    def generate(self, prompts: Sequence[str], cfg: GenerateConfig, n: int | None = None,
                 seed: int | None = None) -> list[list[str]]: ...

    def generate_scored(self, prompts: Sequence[str], cfg: GenerateConfig, groups: Sequence[Sequence[str]],
                        n: int | None = None, seed: int | None = None
                        ) -> tuple[list[list[str]], list[list[dict[str, float]]]]: ...

    def next_token_probs(self, prompts: Sequence[str], candidates: Sequence[str],
                         batch_size: int = 16) -> list[dict[str, float]]: ...

    def stream(self, prompt: str, cfg: GenerateConfig, on_token: Callable[[str], None],
               cancel: threading.Event | None = None) -> str: ...

    def count_tokens(self, text: str) -> int: ...

    def is_single_token(self, text: str) -> bool: ...

    def special_tokens(self) -> list[str]: ...

    def has_tokens(self, tokens: Sequence[str]) -> bool: ...


class TokenizerGenerator:
    """The tokenizer facts and helpers both backends share (they hold the same HF tokenizer)."""

    backend = "?"

    def __init__(self, tokenizer, name: str = "", generation_eos: int | Sequence[int] | None = None):
        self.tokenizer = tokenizer
        self.name = name
        self.generation_eos = generation_eos  # the generation config's end-of-turn id(s), if any
        self.observer: Observer | None = None

    # ------------------------------------------------------------ tokenizer facts

    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def chat_prompt(self, user: str, system: str | None = None) -> str:
        """Wrap a user message in the model's chat template (plain text when it has none)."""
        return self.chat_turns(([{"role": "system", "content": system}] if system else [])
                               + [{"role": "user", "content": user}])

    def chat_turns(self, messages: Sequence[dict[str, str]]) -> str:
        """A conversation (role/content turns) ending where the assistant answers next."""
        if not self.has_chat_template():
            return "\n\n".join(m["content"] for m in messages)
        return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)

    def encode_ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def count_tokens(self, text: str) -> int:
        return len(self.encode_ids(text))

    def is_single_token(self, text: str) -> bool:
        return self.count_tokens(text) == 1

    def special_tokens(self) -> list[str]:
        return list(getattr(self.tokenizer, "all_special_tokens", []))

    def has_tokens(self, tokens: Sequence[str]) -> bool:
        """Every string is one token of the vocabulary (native Self-RAG critique needs this)."""
        vocab = self.tokenizer.get_vocab()
        return all(t in vocab for t in tokens)

    def eos_ids(self) -> set[int]:
        """End-of-turn ids: the tokenizer's and the generation config's (chat models often have two)."""
        ids = {self.tokenizer.eos_token_id} - {None}
        extra = self.generation_eos
        if extra is not None:
            ids |= set(extra if isinstance(extra, (list, tuple)) else [extra])
        return ids

    def first_token_ids(self, candidates: Sequence[str]) -> dict[str, int]:
        """Each candidate's first token; a candidate that encodes to nothing is left out (scored 0.0)."""
        out = {}
        for cand in candidates:
            ids = self.encode_ids(cand)
            if ids:
                out[cand] = ids[0]
        return out

    def clean(self, text: str) -> str:
        """Cut at the end-of-turn token and drop padding; other special tokens (reflection tokens) stay."""
        tok = self.tokenizer
        if tok.eos_token:
            text = text.split(tok.eos_token)[0]
        for pad in {tok.pad_token, "<|endoftext|>"} - {None}:
            text = text.replace(pad, "")
        return text.strip()

    # ------------------------------------------------------------ shared behaviour

    def generate(self, prompts: Sequence[str], cfg: GenerateConfig, n: int | None = None,
                 seed: int | None = None) -> list[list[str]]:
        """n samples for each prompt; seeded per call."""
        return self.generate_scored(prompts, cfg, (), n=n, seed=seed)[0]

    def generate_scored(self, prompts, cfg, groups, n=None, seed=None):  # pragma: no cover - backends define it
        raise NotImplementedError

    def stream(self, prompt: str, cfg: GenerateConfig, on_token: Callable[[str], None],
               cancel: threading.Event | None = None) -> str:
        """One answer, its text passed to `on_token` as it grows; `cancel` stops it (GenerationCancelled)."""
        previous = self.observer
        self.observer = _StreamObserver(on_token, cancel)
        try:
            return self.generate([prompt], cfg, n=1)[0][0]
        finally:
            self.observer = previous

    def check_cancel(self) -> None:
        if self.observer is not None and self.observer.cancelled():
            raise GenerationCancelled()


class _StreamObserver:
    def __init__(self, on_token: Callable[[str], None], cancel: threading.Event | None):
        self._on_token, self._cancel = on_token, cancel

    def on_start(self, rows: int) -> None:
        pass

    def on_token(self, row: int, text: str) -> None:
        self._on_token(text)

    def on_end(self) -> None:
        pass

    def cancelled(self) -> bool:
        return self._cancel is not None and self._cancel.is_set()


def sequence_seed(seed: int, prompt: str, occurrence: int, sample: int) -> int:
    """A sample's own seed from the call's seed and the prompt's text: the same prompt draws the same
    samples whatever else shares its batch (llama.cpp backend; transformers seeds per call)."""
    return (seed * 1_000_003 + zlib.crc32(f"{prompt}\x1f{occurrence}\x1f{sample}".encode())) % (2**63)


def cpu_threads(threads: int = 0) -> int:
    """0 means every core this process may use (CALM_RAG_THREADS overrides)."""
    if threads:
        return threads
    env = os.environ.get("CALM_RAG_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def pick_backend(backend: str = "auto", device: str | None = None) -> str:
    """auto: transformers on CUDA (or where llama-cpp-python is missing), llama.cpp on the CPU."""
    if backend not in BACKENDS:
        raise ValueError(f"--backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    if device and str(device).startswith("cuda"):
        return "transformers"
    if device is None:
        try:
            import torch

            if torch.cuda.is_available():
                return "transformers"
        except ImportError:  # pragma: no cover - torch is a dependency
            pass
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        log.warning("llama-cpp-python is not installed; generating with transformers (slow on a CPU)")
        return "transformers"
    return "llama.cpp"


def check_device(device: str | None) -> None:
    """A CUDA device on a machine without one is a clear error, not torch's AssertionError."""
    if device and str(device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: this machine has no CUDA GPU (or torch is a CPU build); "
                             f"use --device cpu or leave it unset")


def load_generator(spec: str, backend: str = "auto", adapter: str | None = None, device: str | None = None,
                   precision: str = "q8_0", threads: int = 0) -> Generator:
    """The generator for a model spec (packaged name, folder or hub id) on the chosen backend; `adapter` is a
    folder or a packaged adapter name, trained on `spec` (else an error naming its base)."""
    from calm_rag.adapters import adapter_folder, check_base

    check_device(device)
    chosen = pick_backend(backend, device)
    if adapter:
        adapter = str(adapter_folder(adapter))
        check_base(spec, adapter)
    if chosen == "llama.cpp":
        if device and str(device).startswith("cuda"):
            raise ValueError("--backend llama.cpp runs on the CPU here; use --backend transformers for --device cuda")
        from calm_rag.backend_llamacpp import LlamaCppGenerator

        return LlamaCppGenerator.load(spec, adapter=adapter, precision=precision, threads=threads)
    from calm_rag.backend_transformers import TransformersGenerator

    return TransformersGenerator.load(spec, adapter=adapter, device=device, threads=threads)
