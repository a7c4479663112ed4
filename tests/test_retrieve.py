"""Batched search against brute force, language/source pre-filters, and the LangChain adapter."""

from __future__ import annotations

import numpy as np
import pytest

from calm_rag.config import IndexConfig, RetrieveConfig
from calm_rag.index import build_index, load_index
from calm_rag.retrieve import Retriever
from tests.test_index import CFG, make_docs

QUERIES = ["heart blood fever", "心脏 血液", "chien chat", "kidney liver cancer", "肺癌"]


@pytest.fixture(scope="module")
def indexes(tmp_path_factory, tiny_encoder):
    root = tmp_path_factory.mktemp("ret")
    docs = make_docs(n_en=60, n_zh=14, n_fr=8)
    flat = load_index(build_index(docs, tiny_encoder, root / "flat", CFG, progress=False))
    hnsw = load_index(build_index(docs, tiny_encoder, root / "hnsw",
                                  IndexConfig(factory="HNSW8", chunk=CFG.chunk, batch_size=8, shard_size=16),
                                  progress=False))
    return flat, hnsw


def brute_force(loaded, q, k, mask=None):
    vecs = loaded.index.reconstruct_n(0, loaded.ntotal)
    sims = q @ vecs.T
    if mask is not None:
        sims[:, ~mask] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sims, order, axis=1)


def test_batched_search_equals_brute_force(indexes, tiny_encoder):
    flat, _ = indexes
    r = Retriever(flat, tiny_encoder)
    hits = r.search(QUERIES, k=6)
    order, sims = brute_force(flat, tiny_encoder.encode_query(QUERIES), 6)
    assert [len(h) for h in hits] == [6] * len(QUERIES)
    for row, ids, scores in zip(hits, order, sims):
        assert [h.passage.id for h in row] == [flat.passages[i].id for i in ids]
        np.testing.assert_allclose([h.score for h in row], scores, atol=1e-5)
    # one query at a time gives the same answers as the batch
    assert [h.passage.id for h in r.search([QUERIES[1]], k=6)[0]] == [h.passage.id for h in hits[1]]


@pytest.mark.parametrize("which", [0, 1], ids=["flat", "hnsw"])
def test_language_prefilter_returns_exactly_k_in_that_language(indexes, tiny_encoder, which):
    loaded = indexes[which]
    r = Retriever(loaded, tiny_encoder, RetrieveConfig(ef_search=8))
    langs = np.array([p.lang for p in loaded.passages])
    n_zh = int((langs == "zh").sum())
    k = 8
    assert n_zh >= k and n_zh < 0.3 * len(langs)  # a minority language: post-filtering k hits would fail
    hits = r.search(QUERIES, k=k, lang="zh")
    assert all(len(row) == k and all(h.passage.lang == "zh" for h in row) for row in hits)
    order, _ = brute_force(loaded, tiny_encoder.encode_query(QUERIES), k, langs == "zh")
    if which == 0:  # exact index: exactly the brute-force filtered top-k
        assert [[h.passage.id for h in row] for row in hits] == [[loaded.passages[i].id for i in o] for o in order]
    else:
        recall = np.mean([len({h.passage.id for h in row} & {loaded.passages[i].id for i in o}) / k
                          for row, o in zip(hits, order)])
        assert recall >= 0.8


def test_source_and_multi_language_filters(indexes, tiny_encoder):
    flat, _ = indexes
    r = Retriever(flat, tiny_encoder)
    hits = r.search(QUERIES[:2], k=5, lang=["zh", "fr"], source="src-a")
    assert all(h.passage.lang in ("zh", "fr") and h.passage.source == "src-a" for row in hits for h in row)
    assert all(len(row) == 5 for row in hits)


def test_filter_with_fewer_matches_than_k_returns_all_matches(indexes, tiny_encoder):
    flat, _ = indexes
    r = Retriever(flat, tiny_encoder)
    n_fr_b = sum(p.lang == "fr" and p.source == "src-b" for p in flat.passages)
    hits = r.search(["chien"], k=n_fr_b + 20, lang="fr", source="src-b")[0]
    assert len(hits) == n_fr_b
    assert r.search(["x"], k=3, lang="de") == [[]]  # no German passages at all
    with pytest.raises(ValueError, match="unknown language code"):
        r.search(["x"], lang="xx")


def test_retriever_refuses_other_embedder(indexes, tmp_path):
    from calm_rag.embed import load_encoder
    from calm_rag.index import IndexLoadError
    from tests.fixtures.tiny_embedder import build_tiny_embedder

    other = load_encoder(str(build_tiny_embedder(tmp_path / "o", seed=7)), device="cpu")
    with pytest.raises(IndexLoadError, match="gives other vectors"):
        Retriever(indexes[0], other)


def test_langchain_adapter_invoke_and_batch(indexes, tiny_encoder):
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever

    flat, _ = indexes
    r = Retriever(flat, tiny_encoder)
    lc = r.as_langchain(k=4, lang="en")
    assert isinstance(lc, BaseRetriever)
    docs = lc.invoke(QUERIES[0])
    assert len(docs) == 4 and all(isinstance(d, Document) for d in docs)
    direct = r.search([QUERIES[0]], k=4, lang="en")[0]
    assert [d.metadata["id"] for d in docs] == [h.passage.id for h in direct]
    meta = docs[0].metadata
    assert set(meta) >= {"score", "doc_id", "title", "lang", "source"} and meta["lang"] == "en"
    assert docs[0].page_content == direct[0].passage.text

    calls = []
    original = r.search

    def counting(queries, *a, **kw):
        calls.append(len(queries))
        return original(queries, *a, **kw)

    r.search = counting

    class Ends(BaseCallbackHandler):
        n = 0

        def on_retriever_end(self, documents, **kwargs):
            Ends.n += 1

    batch = lc.batch(QUERIES, config={"callbacks": [Ends()]})
    assert calls == [len(QUERIES)]  # one batched search, not one per query
    assert Ends.n == len(QUERIES)
    assert [[d.metadata["id"] for d in row] for row in batch] == \
        [[h.passage.id for h in row] for row in original(QUERIES, k=4, lang="en")]


def test_approximate_index_under_selective_filter_still_returns_k(indexes, tiny_encoder, caplog):
    _, hnsw = indexes
    r = Retriever(hnsw, tiny_encoder, RetrieveConfig(ef_search=1))
    n = sum(p.lang == "fr" and p.source == "src-b" for p in hnsw.passages)
    with caplog.at_level("DEBUG", logger="calm_rag.retrieve"):
        hits = r.search(QUERIES, k=n, lang="fr", source="src-b")
    assert all(len(row) == n and all(h.passage.lang == "fr" for h in row) for row in hits)
    order, _ = brute_force(hnsw, tiny_encoder.encode_query(QUERIES), n,
                           np.array([p.lang == "fr" and p.source == "src-b" for p in hnsw.passages]))
    assert all({h.passage.id for h in row} == {hnsw.passages[i].id for i in o} for row, o in zip(hits, order))


def test_search_keeps_faiss_to_one_thread_beside_the_generator(indexes, tiny_encoder, monkeypatch):
    """FAISS's own OpenMP runtime would leave a spinning worker (OMP_WAIT_POLICY=ACTIVE) on a core the generator
    needs: a search runs with one FAISS thread by default, with FAISS's default when asked, and restores it."""
    import faiss

    flat, _ = indexes
    cls = type(flat.index)
    seen = []
    search = cls.search
    monkeypatch.setattr(cls, "search", lambda self, *a, **k: seen.append(faiss.omp_get_max_threads()) or
                        search(self, *a, **k))
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        one = Retriever(flat, tiny_encoder).search(QUERIES, k=3)
        every = Retriever(flat, tiny_encoder, RetrieveConfig(search_threads=0)).search(QUERIES, k=3)
        assert seen == [1, 2] and faiss.omp_get_max_threads() == 2
    finally:
        faiss.omp_set_num_threads(before)
    assert [[h.passage.id for h in row] for row in one] == [[h.passage.id for h in row] for row in every]
    with pytest.raises(ValueError, match="search_threads=-1 must be >= 0"):
        RetrieveConfig(search_threads=-1)
