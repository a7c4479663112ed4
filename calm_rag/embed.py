"""The sentence-transformers encoder: query/passage prompts, L2-normalised float32 vectors.

Retrieval quality of asymmetric embedders (e5: ``query: `` / ``passage: ``) collapses when the
prefixes are forgotten or swapped, so the prompts live here, in one place, and are recorded in every
index manifest.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Prompts for well-known embedders whose converted folders may lack a `prompts` entry in
# config_sentence_transformers.json. Matched on a lower-cased substring of the model id.
KNOWN_PROMPTS: dict[str, dict[str, str]] = {
    "e5": {"query": "query: ", "document": "passage: "},
}


class EncoderError(ValueError):
    """An embedder that cannot be loaded or used; the message says why and what to do."""


def pick_device(device: str | None = None) -> str:
    """cuda when available (and not overridden), else cpu."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Encoder:
    """A SentenceTransformer plus the prompts and token counting the index needs.

    Vectors are always L2-normalised float32, so inner product == cosine similarity.
    """

    def __init__(self, model: Any, model_id: str, prompts: dict[str, str] | None = None):
        self.model = model
        self.model_id = model_id
        configured = dict(getattr(model, "prompts", None) or {})
        if prompts is None:
            prompts = {
                "query": configured.get("query", ""),
                "document": configured.get("document", configured.get("passage", "")),
            }
            if not any(prompts.values()):
                for key, known in KNOWN_PROMPTS.items():
                    if key in model_id.lower():
                        log.info("embedder %s has no configured prompts; using the %s prompts %s", model_id, key, known)
                        prompts = dict(known)
                        break
        self.query_prompt = prompts.get("query", "")
        self.document_prompt = prompts.get("document", "")
        dim = model.get_embedding_dimension()
        if not dim:
            raise EncoderError(f"embedder {model_id}: cannot tell its output dimension; use a sentence-transformers "
                               "model folder with a Pooling module")
        self.dim = int(dim)
        self._counter = None

    @property
    def max_seq_length(self) -> int:
        return int(self.model.max_seq_length or 512)

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    @property
    def prompts(self) -> dict[str, str]:
        return {"query": self.query_prompt, "document": self.document_prompt}

    @property
    def device(self) -> str:
        return str(self.model.device)

    def _backend(self) -> Any:
        """A copy of the fast tokenizer without padding/truncation (never touch the model's own settings)."""
        if self._counter is None:
            backend = getattr(self.tokenizer, "backend_tokenizer", None)
            if backend is None:
                self._counter = False
            else:
                from tokenizers import Tokenizer

                counter = Tokenizer.from_str(backend.to_str())
                counter.no_padding()
                counter.no_truncation()
                self._counter = counter
        return self._counter

    def count_tokens(self, text: str) -> int:
        """Tokens the embedder sees for `text` (no special tokens, no truncation): sizes chunks."""
        backend = self._backend()
        if backend:
            return len(backend.encode(text, add_special_tokens=False).ids)
        return len(self.tokenizer.encode(text, add_special_tokens=False, verbose=False))

    def token_starts(self, text: str) -> list[int]:
        """Character offset where each token of `text` starts: lets the chunker count any substring's
        tokens without re-tokenizing it."""
        backend = self._backend()
        if backend:
            return [a for a, _ in backend.encode(text, add_special_tokens=False).offsets]
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return [a for a, _ in enc["offset_mapping"]]

    def _encode(self, texts: Sequence[str], prompt: str, task: str, batch_size: int,
                show_progress_bar: bool) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        fn = self.model.encode_query if task == "query" else self.model.encode_document
        vecs = fn(texts, prompt=prompt, batch_size=batch_size, show_progress_bar=show_progress_bar,
                  convert_to_numpy=True, normalize_embeddings=True)
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def encode_query(self, texts: Sequence[str], batch_size: int = 64, show_progress_bar: bool = False) -> np.ndarray:
        """(n, dim) float32, unit-norm rows, with the query prompt."""
        return self._encode(texts, self.query_prompt, "query", batch_size, show_progress_bar)

    def encode_document(self, texts: Sequence[str], batch_size: int = 64,
                        show_progress_bar: bool = False) -> np.ndarray:
        """(n, dim) float32, unit-norm rows, with the document (passage) prompt."""
        return self._encode(texts, self.document_prompt, "document", batch_size, show_progress_bar)

    def describe(self) -> dict[str, Any]:
        """What an index manifest records about its embedder."""
        return {"id": self.model_id, "dim": self.dim, "max_seq_length": self.max_seq_length,
                "prompts": self.prompts, "normalized": True}

    def __repr__(self) -> str:
        return f"Encoder({self.model_id!r}, dim={self.dim}, device={self.device})"


def load_encoder(spec: str | Path, device: str | None = None, prompts: dict[str, str] | None = None) -> Encoder:
    """Load an embedder from a packaged name, a local folder, or a hub id (via `models.resolve_model`)."""
    from sentence_transformers import SentenceTransformer

    spec = str(spec)
    try:
        from calm_rag.models import resolve_model
    except ImportError:  # models.py not there yet (partial checkouts): a path or hub id as-is
        resolved: str | Path = Path(spec) if Path(spec).exists() else spec
    else:
        resolved = resolve_model(spec)
    local = Path(resolved)
    model_id = spec
    if local.exists():
        # A plain folder path keeps its absolute path as id; a packaged name keeps its name.
        if Path(spec).exists():
            model_id = str(Path(spec).resolve())
    try:
        model = SentenceTransformer(str(resolved), device=pick_device(device))
    except OSError as exc:
        raise EncoderError(f"cannot load embedder {spec!r} ({exc}); pass a packaged name, a local "
                           "sentence-transformers folder, or set HF_HUB_OFFLINE=0 for a hub id") from exc
    return Encoder(model, model_id, prompts=prompts)
