"""Benchmarks for index building and retrieval; prints a markdown report (ratios measured in one run).

    HF_HUB_OFFLINE=1 python scripts/bench_index.py --embedder /path/to/minilm [--embedder /path/to/e5] \
        --parts build,search,xling,scale --docs 1500 --scale-fraction 0.02 --out bench.md

Parts:
  build  our pipeline (chunk + embed + store + FAISS add) vs raw SentenceTransformer.encode over the
         same chunk texts (the overhead we add);
  search batched Retriever search vs a loop of LangChain FAISS.similarity_search over the same
         Flat index of random unit vectors (search cost only: both get precomputed query vectors),
         plus how often LangChain's post-filter returns fewer than k under a language filter;
  xling  cross-lingual retrieval on WordNet: index English synsets, query with the zh/fr/de/it/ja
         lemmas of the same synsets, recall@1/@10 of the matching English document per language;
  scale  build time and peak memory for a fraction of every corpus of the `all` recipe, projected to
         the full recipe.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
CORPORA = REPO.parent / "shared" / "corpora"

from calm_rag.config import ChunkConfig, IndexConfig, RetrieveConfig  # noqa: E402
from calm_rag.corpora import CorpusSource, chunk_documents, load_documents, passage_embed_text  # noqa: E402
from calm_rag.embed import load_encoder  # noqa: E402
from calm_rag.index import LoadedIndex, build_index, load_index  # noqa: E402
from calm_rag.index_recipes import load_recipe  # noqa: E402
from calm_rag.records import Passage  # noqa: E402
from calm_rag.retrieve import Retriever  # noqa: E402

log = logging.getLogger("bench_index")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_build(encoder, n_docs: int, batch_size: int, out: list[str]) -> None:
    per = n_docs // 3
    sources = [CorpusSource(str(CORPORA / "medquad.en.jsonl.gz"), limit=per),
               CorpusSource(str(CORPORA / "cmekg.zh.jsonl.gz"), limit=per),
               CorpusSource(str(CORPORA / "omw.fr.jsonl.gz"), limit=n_docs - 2 * per)]
    docs = load_documents(sources)
    cfg = IndexConfig(batch_size=batch_size, chunk=ChunkConfig())
    passages = list(chunk_documents(docs, encoder, cfg.chunk))
    texts = [encoder.document_prompt + passage_embed_text(p, cfg.chunk) for p in passages]
    model = encoder.model

    with tempfile.TemporaryDirectory() as tmp:
        model.encode(texts[:batch_size], batch_size=batch_size)  # warm-up
        t = time.perf_counter()
        raw = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
        raw_s = time.perf_counter() - t
        t = time.perf_counter()
        path = build_index(docs, encoder, Path(tmp) / "b", cfg, progress=False)
        ours_s = time.perf_counter() - t
        loaded = load_index(path)
        m = loaded.manifest["build"]
        same = np.abs(loaded.index.reconstruct_n(0, loaded.ntotal) - raw).max()
    out += [
        f"### Build throughput ({encoder.model_id}, device {encoder.device})", "",
        f"{len(docs)} documents (medquad.en, cmekg.zh, omw.fr: {per}/{per}/{n_docs - 2 * per}) -> "
        f"{len(passages)} chunks of <= {cfg.chunk.max_tokens} tokens; batch size {batch_size}.", "",
        "| pipeline | seconds | chunks/s |", "|---|---:|---:|",
        f"| raw `SentenceTransformer.encode` (chunk texts given) | {raw_s:.1f} | {len(texts) / raw_s:.1f} |",
        f"| calm-rag `build_index` (load+chunk+embed+store+FAISS) | {ours_s:.1f} | {len(texts) / ours_s:.1f} |",
        f"| of which embedding | {m['embed_seconds']:.1f} | |", "",
        f"Overhead of the whole pipeline over raw encode: **{(ours_s / raw_s - 1) * 100:+.1f}%** "
        f"(embedding step alone: {(m['embed_seconds'] / raw_s - 1) * 100:+.1f}%). "
        f"Max |vector difference| vs raw encode: {same:.2e}.", ""]


from langchain_core.embeddings import Embeddings  # noqa: E402


class _LookupEmbeddings(Embeddings):
    """LangChain Embeddings returning precomputed vectors, so both sides time search only."""

    def __init__(self, table: dict[str, np.ndarray]):
        self.table = table

    def embed_query(self, text: str) -> list[float]:
        return self.table[text].tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self.table[t].tolist() for t in texts]


def bench_search(n_vectors: int, n_queries: int, dim: int, k: int, out: list[str]) -> None:
    import faiss
    from langchain_community.docstore.in_memory import InMemoryDocstore
    from langchain_community.vectorstores import FAISS
    from langchain_core.documents import Document as LCDocument

    rng = np.random.default_rng(0)
    xb = rng.standard_normal((n_vectors, dim)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    xq = rng.standard_normal((n_queries, dim)).astype(np.float32)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    langs = ["en", "zh", "fr", "de", "it", "ja"]
    lang_of = [langs[0] if i % 10 < 5 else langs[1 + i % 5] for i in range(n_vectors)]  # en 50%, others 10%
    index = faiss.IndexFlatIP(dim)
    index.add(xb)
    passages = [Passage(f"d{i}#0", f"d{i}", f"t{i}", f"text {i}", lang_of[i], "rand") for i in range(n_vectors)]
    loaded = LoadedIndex(path=Path("<memory>"), index=index, passages=passages, manifest={})
    # no encoder: precomputed vectors; FAISS gets its default threads, as under LangChain
    retriever = Retriever(loaded, None, RetrieveConfig(k=k, search_threads=0), check=False)

    docstore = InMemoryDocstore({str(i): LCDocument(page_content=p.text, metadata={"lang": p.lang})
                                 for i, p in enumerate(passages)})
    queries = [f"q{i}" for i in range(n_queries)]
    lc = FAISS(_LookupEmbeddings(dict(zip(queries, xq))), index, docstore, {i: str(i) for i in range(n_vectors)})

    t = time.perf_counter()
    ours = retriever.search_vectors(xq, k)
    ours_s = time.perf_counter() - t
    t = time.perf_counter()
    theirs = [lc.similarity_search(q, k=k) for q in queries]
    lc_s = time.perf_counter() - t
    agree = np.mean([[h.passage.text for h in a] == [d.page_content for d in b] for a, b in zip(ours, theirs)])

    t = time.perf_counter()
    ours_f = retriever.search_vectors(xq, k, lang="zh")
    ours_f_s = time.perf_counter() - t
    t = time.perf_counter()
    theirs_f = [lc.similarity_search(q, k=k, filter={"lang": "zh"}) for q in queries]
    lc_f_s = time.perf_counter() - t
    short = sum(len(r) < k for r in theirs_f)
    out += [
        "### Search: batched vs a loop of LangChain FAISS.similarity_search", "",
        f"{n_vectors:,} random unit vectors (dim {dim}), {n_queries} random queries, k={k}, IndexFlatIP "
        "(search only: query vectors precomputed for both). CPU.", "",
        "| search | seconds | queries/s |", "|---|---:|---:|",
        f"| calm-rag `Retriever.search_vectors` (one batch) | {ours_s:.3f} | {n_queries / ours_s:,.0f} |",
        f"| LangChain `FAISS.similarity_search` loop | {lc_s:.3f} | {n_queries / lc_s:,.0f} |",
        f"| calm-rag, lang='zh' pre-filter (10% of vectors) | {ours_f_s:.3f} | {n_queries / ours_f_s:,.0f} |",
        f"| LangChain, filter={{'lang': 'zh'}} (post-filter, fetch_k=20) | {lc_f_s:.3f} | "
        f"{n_queries / lc_f_s:,.0f} |", "",
        f"Speed-up: **{lc_s / ours_s:.1f}x** unfiltered, **{lc_f_s / ours_f_s:.1f}x** filtered. Same top-{k} "
        f"as LangChain for {agree:.0%} of queries. Under the filter every calm-rag query got {k} zh hits "
        f"({all(len(r) == k for r in ours_f)}); LangChain returned fewer than {k} for {short} of {n_queries}.", ""]


def bench_xling(encoders, n_per_lang: int, n_distractors: int, out: list[str]) -> None:
    rng = random.Random(0)
    english = {d.id[len("wordnet-"):]: d for d in load_documents([CORPORA / "wordnet.en.jsonl.gz"])}
    queries: dict[str, list[tuple[str, str]]] = {}
    for lang in ("zh", "fr", "de", "it", "ja"):
        docs = load_documents([CORPORA / f"omw.{lang}.jsonl.gz"])
        pairs = [(d.title, "-".join(d.id.rsplit("-", 2)[-2:])) for d in docs]
        pairs = [p for p in pairs if p[1] in english]
        queries[lang] = rng.sample(pairs, min(n_per_lang, len(pairs)))
    targets = sorted({key for qs in queries.values() for _, key in qs})
    others = sorted(set(english) - set(targets))
    keys = targets + rng.sample(others, min(n_distractors, len(others)))
    index_docs = [english[k] for k in keys]
    out += ["### Cross-lingual retrieval (WordNet synsets)", "",
            f"Index: {len(index_docs)} English WordNet synsets ({len(targets)} targets + distractors), Flat. "
            f"Queries: the lemmas (title) of {n_per_lang} random synsets per language from omw.<lang>; "
            "a hit is the English synset with the same offset-pos.", "",
            "| embedder | lang | recall@1 | recall@10 |", "|---|---|---:|---:|"]
    for encoder in encoders:
        with tempfile.TemporaryDirectory() as tmp:
            path = build_index(index_docs, encoder, Path(tmp) / "x", IndexConfig(batch_size=64), progress=False)
            retriever = Retriever(load_index(path), encoder)
            for lang, qs in queries.items():
                hits = retriever.search([q for q, _ in qs], k=10)
                ranks = [[h.passage.doc_id[len("wordnet-"):] for h in row] for row in hits]
                r1 = np.mean([key in row[:1] for row, (_, key) in zip(ranks, qs)])
                r10 = np.mean([key in row for row, (_, key) in zip(ranks, qs)])
                out.append(f"| {encoder.model_id} | {lang} | {r1:.3f} | {r10:.3f} |")
    out.append("")


def bench_scale(encoder, fraction: float, factory: str, out: list[str]) -> None:
    recipe = load_recipe("all")
    counts = {}
    sources = []
    for src in recipe.corpora:
        with_docs = sum(1 for _ in load_documents([src]))
        counts[src.path] = with_docs
        sources.append(CorpusSource(src.path, limit=max(1, int(with_docs * fraction))))
    rss0 = peak_rss_mib()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        path = build_index(sources, encoder, Path(tmp) / "all", IndexConfig(factory=factory, chunk=recipe.index.chunk,
                                                                            batch_size=recipe.index.batch_size),
                           progress=False)
        secs = time.perf_counter() - t
        m = load_index(path).manifest
    n_docs = m["counts"]["documents"]
    n_chunks = m["counts"]["passages"]
    total_docs = sum(counts.values())
    projected_chunks = n_chunks / n_docs * total_docs
    projected_s = secs / n_chunks * projected_chunks
    out += [f"### Build time and memory: `all` recipe subset ({fraction:.1%} of every corpus)", "",
            f"{n_docs:,} documents -> {n_chunks:,} chunks, {factory}, {encoder.model_id} on {encoder.device}: "
            f"**{secs:.0f} s** ({n_chunks / secs:.1f} chunks/s; embedding {m['build']['embed_seconds']:.0f} s, "
            f"FAISS {m['build']['index_seconds']:.1f} s). Peak RSS of the bench process {peak_rss_mib():,.0f} MiB "
            f"(before this build {rss0:,.0f} MiB; run `--parts scale` alone for the build's own peak).", "",
            f"Projected full `all` recipe ({total_docs:,} documents, ~{projected_chunks:,.0f} chunks at the "
            f"subset's chunks/document): **~{projected_s / 3600:.1f} h** on this machine.", ""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embedder", action="append", required=True, help="embedder folder or name (repeatable)")
    ap.add_argument("--parts", default="build,search,xling,scale")
    ap.add_argument("--docs", type=int, default=1500, help="documents for the build benchmark")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--vectors", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--xling-queries", type=int, default=200, help="queries per language")
    ap.add_argument("--xling-distractors", type=int, default=4000)
    ap.add_argument("--scale-fraction", type=float, default=0.02)
    ap.add_argument("--scale-factory", default="HNSW32")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", type=Path, help="also write the markdown here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not CORPORA.is_dir():
        print(f"{CORPORA} not found: the benchmarks read the shared corpora", file=sys.stderr)
        return 2
    parts = set(args.parts.split(","))
    import torch

    out = ["## calm-rag index benchmarks", "",
           f"Machine: {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, "
           f"load average at start {os.getloadavg()[0]:.1f}. Command: `python scripts/bench_index.py "
           f"{' '.join(argv if argv is not None else sys.argv[1:])}`", ""]
    encoders = [load_encoder(e, device=args.device) for e in args.embedder] if parts - {"search"} else []

    def flush() -> None:
        text = "\n".join(out) + "\n"
        if args.out:
            args.out.write_text(text, encoding="utf-8")

    if "build" in parts:
        bench_build(encoders[0], args.docs, args.batch_size, out)
        flush()
    if "search" in parts:
        bench_search(args.vectors, args.queries, 384, 10, out)
        flush()
    if "xling" in parts:
        bench_xling(encoders, args.xling_queries, args.xling_distractors, out)
        flush()
    if "scale" in parts:
        bench_scale(encoders[-1], args.scale_fraction, args.scale_factory, out)
        flush()
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
