"""Batched search over a LoadedIndex, with language/source pre-filters, and a LangChain retriever adapter.

Filters are applied inside FAISS (SearchParameters with an IDSelector), not after the fact, so a
filtered search returns k passages whenever k passages match. Approximate indexes (HNSW, IVF) can
still come back short under a selective filter; those queries are re-scored exactly over the
matching vectors, so the guarantee holds for every factory.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from calm_rag.config import RetrieveConfig
from calm_rag.languages import check_lang
from calm_rag.records import Hit

log = logging.getLogger(__name__)


def _as_set(value: str | Iterable[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    return frozenset([value] if isinstance(value, str) else value)


class Retriever:
    """Encode queries in batches and search one index; `search` is the whole API."""

    def __init__(self, index: Any, encoder: Any, cfg: RetrieveConfig | None = None, check: bool = True):
        from calm_rag.index import check_encoder

        self.index = index  # a calm_rag.index.LoadedIndex
        self.encoder = encoder
        self.cfg = cfg or RetrieveConfig()
        if check:
            check_encoder(index.manifest, encoder, str(index.path))
        passages = index.passages
        self._langs = np.array([p.lang for p in passages], dtype=object)
        self._sources = np.array([p.source for p in passages], dtype=object)
        self._subsets: dict[tuple[Any, Any], tuple[np.ndarray, Any]] = {}
        self._exact: dict[tuple[Any, Any], np.ndarray] = {}

    # -- filters
    def _allowed(self, langs: frozenset[str] | None, sources: frozenset[str] | None) -> tuple[np.ndarray, Any]:
        """Matching row ids and their FAISS selector, cached per filter."""
        import faiss

        key = (langs, sources)
        if key not in self._subsets:
            mask = np.ones(len(self._langs), dtype=bool)
            if langs is not None:
                mask &= np.isin(self._langs, list(langs))
            if sources is not None:
                mask &= np.isin(self._sources, list(sources))
            ids = np.flatnonzero(mask).astype(np.int64)
            self._subsets[key] = (ids, faiss.IDSelectorBatch(ids))
        return self._subsets[key]

    def _params(self, index: Any, sel: Any, k: int) -> Any:
        import faiss

        inner = faiss.downcast_index(index)
        if isinstance(inner, faiss.IndexPreTransform):
            return faiss.SearchParametersPreTransform(index_params=self._params(inner.index, sel, k))
        if hasattr(inner, "nprobe"):
            return faiss.SearchParametersIVF(sel=sel, nprobe=self.cfg.nprobe)
        if hasattr(inner, "hnsw"):
            return faiss.SearchParametersHNSW(sel=sel, efSearch=max(self.cfg.ef_search, k))
        return faiss.SearchParameters(sel=sel) if sel is not None else None

    def _exact_rows(self, key: tuple[Any, Any], ids: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over the matching vectors (as the index stores them) for queries that came back short."""
        if key not in self._exact:
            index = self.index.index
            inner = index
            import faiss

            ivf = faiss.try_extract_index_ivf(index) if hasattr(faiss, "try_extract_index_ivf") else None
            if ivf is not None:
                ivf.make_direct_map()
            self._exact[key] = np.vstack([inner.reconstruct_batch(ids[i:i + 65536])
                                          for i in range(0, len(ids), 65536)]).astype(np.float32)
        scores = q @ self._exact[key].T
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, top, axis=1), ids[top]

    # -- search
    def search_vectors(self, q: np.ndarray, k: int | None = None, lang: str | Iterable[str] | None = None,
                       source: str | Iterable[str] | None = None) -> list[list[Hit]]:
        """Top-k hits for already-encoded queries (unit-norm rows)."""
        k = self.cfg.k if k is None else k
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k={k!r}: ask for at least 1 passage per query")
        q = np.ascontiguousarray(q, dtype=np.float32)
        langs = _as_set(lang)
        if langs is not None:
            langs = frozenset(check_lang(x) for x in langs)
        sources = _as_set(source)
        index = self.index.index
        ids, sel = (None, None) if langs is None and sources is None else self._allowed(langs, sources)
        pool = index.ntotal if ids is None else len(ids)
        kk = min(k, pool)
        if kk == 0 or len(q) == 0:
            return [[] for _ in range(len(q))]
        params = self._params(index, sel, kk)
        with faiss_threads(self.cfg.search_threads):
            scores, rows = index.search(q, kk, params=params) if params is not None else index.search(q, kk)
        short = np.flatnonzero((rows >= 0).sum(axis=1) < kk)
        if len(short):
            log.debug("%d of %d queries came back short under filter %s; rescoring exactly", len(short), len(q),
                      (langs, sources))
            all_ids = ids if ids is not None else np.arange(index.ntotal, dtype=np.int64)
            s2, r2 = self._exact_rows((langs, sources), all_ids, q[short], kk)
            scores[short], rows[short] = s2, r2
        passages = self.index.passages
        return [[Hit(score=float(s), passage=passages[r]) for s, r in zip(srow, rrow) if r >= 0]
                for srow, rrow in zip(scores, rows)]

    def search(self, queries: Sequence[str], k: int | None = None, lang: str | Iterable[str] | None = None,
               source: str | Iterable[str] | None = None) -> list[list[Hit]]:
        """Top-k passages per query, best first; `lang` / `source` restrict the candidates (pre-filter)."""
        if isinstance(queries, str):
            raise TypeError("search takes a list of queries; wrap a single query in a list")
        if not queries:
            return []
        empty = [i for i, text in enumerate(queries) if not isinstance(text, str) or not text.strip()]
        if empty:
            raise ValueError(f"query {empty[0] + 1} of {len(queries)} is empty; give the text to search for")
        q = self.encoder.encode_query(list(queries), batch_size=self.cfg.batch_size)
        return self.search_vectors(q, k, lang, source)

    def as_langchain(self, k: int | None = None, lang: str | Iterable[str] | None = None,
                     source: str | Iterable[str] | None = None) -> Any:
        """A langchain_core BaseRetriever over this object (invoke / batch / ainvoke)."""
        cls = _langchain_retriever_class()
        lang_arg = lang if lang is None or isinstance(lang, str) else list(lang)
        source_arg = source if source is None or isinstance(source, str) else list(source)
        return cls(retriever=self, k=k or self.cfg.k, lang=lang_arg, source=source_arg)


def hit_to_document(hit: Hit) -> Any:
    """A langchain Document with the passage text and its provenance in metadata."""
    from langchain_core.documents import Document as LCDocument

    p = hit.passage
    return LCDocument(id=p.id, page_content=p.text,
                      metadata={"score": hit.score, "id": p.id, "doc_id": p.doc_id, "title": p.title,
                                "lang": p.lang, "source": p.source})


_LC_CLASS: Any = None


def _langchain_retriever_class() -> Any:
    """Defined on first use so importing calm_rag.retrieve does not import langchain."""
    global _LC_CLASS
    if _LC_CLASS is not None:
        return _LC_CLASS
    from langchain_core.callbacks import CallbackManager, CallbackManagerForRetrieverRun
    from langchain_core.documents import Document as LCDocument
    from langchain_core.retrievers import BaseRetriever
    from langchain_core.runnables.config import RunnableConfig, get_config_list
    from pydantic import ConfigDict

    class CalmRagRetriever(BaseRetriever):
        """LangChain view of a calm_rag Retriever; `batch` runs one batched FAISS search."""

        model_config = ConfigDict(arbitrary_types_allowed=True)
        retriever: Any
        k: int = 5
        lang: str | list[str] | None = None
        source: str | list[str] | None = None

        def _get_relevant_documents(self, query: str, *,
                                    run_manager: CallbackManagerForRetrieverRun) -> list[LCDocument]:
            hits = self.retriever.search([query], self.k, self.lang, self.source)[0]
            return [hit_to_document(h) for h in hits]

        def batch(self, inputs: list[str], config: RunnableConfig | list[RunnableConfig] | None = None, *,
                  return_exceptions: bool = False, **kwargs: Any) -> list[Any]:
            if not inputs:
                return []
            configs = get_config_list(config, len(inputs))
            runs = []
            for query, cfg in zip(inputs, configs):
                manager = CallbackManager.configure(
                    cfg.get("callbacks"), None, inheritable_tags=cfg.get("tags"), local_tags=self.tags,
                    inheritable_metadata=cfg.get("metadata"), local_metadata=self.metadata)
                runs.append(manager.on_retriever_start(None, query, name=cfg.get("run_name") or self.get_name()))
            try:
                hits = self.retriever.search(list(inputs), self.k, self.lang, self.source)
            except Exception as exc:
                for run in runs:
                    run.on_retriever_error(exc)
                if return_exceptions:
                    return [exc] * len(inputs)
                raise
            out = []
            for run, row in zip(runs, hits):
                docs = [hit_to_document(h) for h in row]
                run.on_retriever_end(docs)
                out.append(docs)
            return out

    _LC_CLASS = CalmRagRetriever
    return _LC_CLASS


@contextmanager
def faiss_threads(n: int):
    """FAISS's OpenMP threads limited to `n` (0: unchanged) for the block, then restored."""
    import faiss

    if n <= 0:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def load_retriever(index_dir: str | Path, embedder: str | None = None):
    """Load an index and the embedder its manifest names (or `embedder`), checked against each other."""
    from calm_rag.embed import load_encoder
    from calm_rag.index import load_index

    index = load_index(index_dir)
    encoder = load_encoder(embedder or index.manifest["embedder"]["id"])
    return Retriever(index, encoder)
