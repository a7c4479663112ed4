"""Parse rate and accuracy of the Self-RAG generator on real questions, with and without retrieval.

Reads X-CSQA and MedQA-USMLE training questions from ../shared/data (skips cleanly when absent),
answers the first N of each in each language greedily (n=1), and prints a markdown table.
Generations are appended to --out, so an interrupted run resumes.

    python scripts/eval_selfrag.py --questions 50 --langs en,zh,fr --index indexes/demo --out runs/eval_selfrag
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
SETS = {"xcsqa": "xcsqa/train/{lang}.json", "medqa": "medqa/usmle/{lang}.json"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--index", default=str(REPO / "indexes" / "demo"))
    ap.add_argument("--questions", type=int, default=50)
    ap.add_argument("--langs", default="en,zh,fr")
    ap.add_argument("--modes", default="never,always")
    ap.add_argument("-k", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--out", default=str(REPO / "runs" / "eval_selfrag"))
    args = ap.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"skipped: {SHARED} not found (this script reads the real QA data in ../shared/data)")

    from calm_rag.config import GenerateConfig, SelfRagConfig
    from calm_rag.evaluate import evaluate_generations
    from calm_rag.generate import Generator
    from calm_rag.pipeline import load_retriever, sample_units
    from calm_rag.qa import load_questions
    from calm_rag.rag import SelfRag

    langs = args.langs.split(",")
    gen = Generator.load(args.model)
    retriever = load_retriever(args.index)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for mode in args.modes.split(","):
        rag = SelfRag(gen, retriever, SelfRagConfig(retrieval=mode, top_k=args.k),
                      GenerateConfig(n=1, temperature=0.0, max_new_tokens=args.max_new_tokens))
        for name, pattern in SETS.items():
            units = [q for lang in langs
                     for q in load_questions(SHARED / pattern.format(lang=lang), lang=lang, dataset=name)[:args.questions]]
            started = time.time()
            gens = sample_units(rag, units, out / f"{name}-{mode}.jsonl", 1)
            gold = {q.id: q.gold for q in units}
            rep = evaluate_generations(gens, gold, langs=langs)
            rows.append((name, mode, rep, time.time() - started, len(units)))
            (out / f"{name}-{mode}.report.json").write_text(json.dumps(rep.to_dict(), indent=1))
    print(f"model {args.model}, critique {rag.mode}, index {args.index}, k={args.k}, "
          f"{args.questions} questions per set and language, greedy")
    head = " | ".join(f"{lang} parsed | {lang} acc" for lang in langs)
    print(f"| set | retrieval | {head} | seconds/unit |")
    print("|---|---|" + "---:|" * (2 * len(langs) + 1))
    for name, mode, rep, secs, n in rows:
        cells = " | ".join(f"{100 * rep.parse_rate[lang]:.0f}% | {100 * rep.accuracy[lang]:.1f}" for lang in langs)
        print(f"| {name} | {mode} | {cells} | {secs / max(n, 1):.1f} |")


if __name__ == "__main__":
    main()
