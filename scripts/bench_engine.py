"""The llama.cpp backend against transformers on the CALM stages, same prompts, same run.

Each (model, backend, stage) runs in a subprocess of its own, one after another, so peak RSS is
each one's own and nothing else competes for the cores (run it alone on the machine). Stages, on
X-CSQA training-split questions in en/zh/fr with passages from the demo index (built on first use):
- sample: CALM sampling, k=2 passages, n=3, T=0.8, verbalised critique (the run configs' setting);
- eval-never / eval-always: greedy evaluation, zero-shot and with k=2 passages;
- score: next-token probabilities of Yes/No after relevance-critic prompts.
Rates are question-language units per hour (prompts per second for score); a ratio is llama.cpp
over transformers in this run. `--quick` runs the 0.5B only, on fewer questions (under 20 min);
its last line is a JSON object with `backend` and `sampling_speedup`.

    python scripts/bench_engine.py --quick --json
    python scripts/bench_engine.py --models qwen2.5-coder-0.5b-instruct,qwen2.5-coder-1.5b-instruct
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
STAGES = ("sample", "eval-never", "eval-always", "score")
LANGS = ("en", "zh", "fr")


def units(questions: int):
    from calm_rag.qa import load_questions

    split = json.loads((REPO / "splits" / "xcsqa.json").read_text())
    train = split["train"][:questions]  # qa.py's own ids (xcsqa-train-12), as in scripts/eval_selfrag.py
    per_lang = {}
    for lang in LANGS:
        by_id = {q.id: q for q in load_questions(SHARED / f"xcsqa/train/{lang}.json", lang=lang)}
        per_lang[lang] = [by_id[i] for i in train]
    return [[per_lang[lang][i] for lang in LANGS] for i in range(questions)]


def worker(args) -> dict:
    """One stage on one backend; prints a JSON line with its timing, outputs and peak RSS."""
    from calm_rag.config import GenerateConfig, SelfRagConfig
    from calm_rag.generate import load_generator
    from calm_rag.retrieve import load_retriever
    from calm_rag.rag import CRITIC_RELEVANCE, YES_NO, SelfRag
    from calm_rag import selfrag

    groups = units(args.questions)
    retriever = load_retriever(args.index)
    hits = {q.lang + q.id: h for g in groups for q, h in zip(g, retriever.search([selfrag.question_text(q) for q in g], k=2))}
    started = time.time()
    gen = load_generator(args.model, backend=args.backend, device="cpu")
    load_s = time.time() - started
    outputs: list = []
    started = time.time()
    if args.stage == "score":
        prompts = [gen.chat_prompt(f"Reference passage:\n{selfrag.format_paragraph(h.passage)}\n\n"
                                   + CRITIC_RELEVANCE.format(question=selfrag.question_text(q)))
                   for g in groups for q in g for h in hits[q.lang + q.id]]
        tables = gen.next_token_probs(prompts, YES_NO)
        outputs = [t["Yes"] for t in tables]
        count = len(prompts)
    else:
        sampling = args.stage == "sample"
        gcfg = GenerateConfig(n=3 if sampling else 1, temperature=0.8 if sampling else 0.0, max_new_tokens=64)
        mode = "never" if args.stage == "eval-never" else "always"
        rag = SelfRag(gen, retriever, SelfRagConfig(retrieval=mode, top_k=2, critique="verbalised"), gcfg)
        count = 0
        for g in groups:  # one question in its three languages per call, as the pipeline batches them
            answers = rag.answer_many(g, hits=[hits[q.lang + q.id] if mode == "always" else None for q in g])
            outputs += [[c.answer for c in s] for a in answers for s in a.samples]
            outputs += [a.letters for a in answers]
            count += len(g)
    seconds = time.time() - started
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    reused = getattr(getattr(gen, "cache", None), "reused", 0)
    return {"model": args.model, "backend": gen.backend, "stage": args.stage, "units": count, "seconds": seconds,
            "reused_prefix_tokens": reused,
            "load_seconds": load_s, "peak_rss_mb": rss_mb, "outputs": outputs}


def run_one(model: str, backend: str, stage: str, questions: int, index: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--model", model, "--backend", backend, "--stage", stage,
           "--questions", str(questions), "--index", index]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"worker {model} {backend} {stage} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ensure_index() -> str:
    path = REPO / "indexes" / "demo"
    if not (path / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "calm_rag.cli", "index", "build", "--recipe", "demo"], cwd=REPO,
                       check=True)
    return str(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the 0.5B only, 2 questions (x3 languages) per stage")
    ap.add_argument("--json", action="store_true", help="end with one JSON line of the results")
    ap.add_argument("--models", default="qwen2.5-coder-0.5b-instruct,qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--questions", type=int, help="questions per stage (each in en, zh, fr); default 2 quick, 4 full")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--backend", help=argparse.SUPPRESS)
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--index", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"skipped: {SHARED} not found (this benchmark reads X-CSQA from ../shared/data)")
    if args.worker:
        print(json.dumps(worker(args), ensure_ascii=False))
        return
    models = ["qwen2.5-coder-0.5b-instruct"] if args.quick else args.models.split(",")
    questions = args.questions or (2 if args.quick else 4)
    index = ensure_index()
    print(f"# bench_engine: {questions} X-CSQA train questions x {len(LANGS)} languages per stage, "
          f"{os.cpu_count()} CPUs; each cell a subprocess of its own, one at a time", flush=True)
    results, summary = [], {}
    for model in models:
        for stage in args.stages.split(","):
            cells = {b: run_one(model, b, stage, questions, index) for b in ("transformers", "llama.cpp")}
            hf, ll = cells["transformers"], cells["llama.cpp"]
            speedup = hf["seconds"] / ll["seconds"]
            same = sum(a == b for a, b in zip(hf["outputs"], ll["outputs"])) if stage != "score" else None
            max_diff = (max(abs(a - b) for a, b in zip(hf["outputs"], ll["outputs"])) if stage == "score" else None)
            row = {"model": model, "stage": stage, "units": ll["units"], "transformers_s": round(hf["seconds"], 1),
                   "llama_cpp_s": round(ll["seconds"], 1), "speedup": round(speedup, 2),
                   "transformers_rss_mb": round(hf["peak_rss_mb"]), "llama_cpp_rss_mb": round(ll["peak_rss_mb"]),
                   "same_outputs": same, "outputs": len(ll["outputs"]), "max_prob_diff": max_diff}
            results.append(row)
            summary.setdefault(model, {})[stage] = speedup
            print(json.dumps(row), flush=True)
    print("\n| model | stage | units | transformers | llama.cpp | speedup | peak RSS hf / llama (MB) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        per = "prompts/s" if r["stage"] == "score" else "units/h"
        scale = 1 if r["stage"] == "score" else 3600
        print(f"| {r['model']} | {r['stage']} | {r['units']} | {scale * r['units'] / r['transformers_s']:.1f} {per} | "
              f"{scale * r['units'] / r['llama_cpp_s']:.1f} {per} | **{r['speedup']:.2f}x** | "
              f"{r['transformers_rss_mb']} / {r['llama_cpp_rss_mb']} |")
    if args.json:
        first = models[0]
        print(json.dumps({"backend": "llama.cpp", "sampling_speedup": round(summary[first].get("sample", 0.0), 2),
                          "model": first, "speedups": {m: {s: round(v, 2) for s, v in st.items()}
                                                       for m, st in summary.items()}}))


if __name__ == "__main__":
    main()
