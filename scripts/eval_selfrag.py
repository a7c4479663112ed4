"""Parse rate and accuracy of the Self-RAG generator on real questions, with and without retrieval.

Reads X-CSQA and MedQA-USMLE training questions from ../shared/data (skips cleanly when absent),
answers the first N of each in each language greedily (n=1) and prints a markdown table.
"parsed" is the share of outputs whose free text names exactly one option (the extractor never
guesses); "completed" is the share that needed the answer-cue step (`selfrag.complete_answer`:
the cue is appended and the most probable option letter taken). Accuracy counts every answer.
Generations are appended under --out, so an interrupted run resumes.

    python scripts/eval_selfrag.py --questions 50 --langs en,zh,fr --modes never,always \\
        --xcsqa-index indexes/commonsense --medqa-index indexes/medical-lite --out runs/eval_selfrag
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
SPLITS = {"xcsqa": "xcsqa.json", "medqa": "medqa-usmle.json"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--xcsqa-index", default=str(REPO / "indexes" / "commonsense"))
    ap.add_argument("--medqa-index", default=str(REPO / "indexes" / "medical"))
    ap.add_argument("--sets", default="xcsqa,medqa")
    ap.add_argument("--questions", type=int, default=50)
    ap.add_argument("--langs", default="en,zh,fr")
    ap.add_argument("--modes", default="never,always")
    ap.add_argument("-k", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--units-per-batch", type=int, default=12)
    ap.add_argument("--out", default=str(REPO / "runs" / "eval_selfrag"))
    ap.add_argument("--train-split", action="store_true",
                    help="the first N questions of the committed splits' train lists (splits/*.json), never dev")
    ap.add_argument("--backend", default="auto", help="generation engine (auto: llama.cpp on CPU)")
    ap.add_argument("--no-critique-zero-shot", action="store_true",
                    help="do not ask the utility question of answers without a passage (selfrag.critique_zero_shot: "
                         "false): the same greedy answers, about a third less time; the utility scores go")
    args = ap.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"skipped: {SHARED} not found (this script reads the real QA data in ../shared/data)")

    from calm_rag.config import GenerateConfig, SelfRagConfig
    from calm_rag.evaluate import evaluate_generations
    from calm_rag.generate import load_generator
    from calm_rag.sampling import sample_units
    from calm_rag.retrieve import load_retriever
    from calm_rag.qa import load_questions
    from calm_rag.rag import SelfRag

    langs = args.langs.split(",")
    gen = load_generator(args.model, backend=args.backend)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gen_cfg = GenerateConfig(n=1, temperature=0.0, max_new_tokens=args.max_new_tokens,
                             units_per_batch=args.units_per_batch)
    rows, deltas = [], []
    for name in args.sets.split(","):
        index = getattr(args, f"{name}_index")
        retriever = load_retriever(index) if any(m != "never" for m in args.modes.split(",")) else None
        # question-major: a batch holds whole questions in all their languages
        if args.train_split:  # qa.py's own ids (xcsqa-train-12) are the ones the split files list
            train = json.loads((REPO / "splits" / SPLITS[name]).read_text())["train"][:args.questions]
            per_lang = {}
            for lang in langs:
                by_id = {q.id: q for q in load_questions(SHARED / SETS[name].format(lang=lang), lang=lang)}
                per_lang[lang] = [by_id[i] for i in train]
        else:
            per_lang = {lang: load_questions(SHARED / SETS[name].format(lang=lang), lang=lang,
                                             dataset=name)[:args.questions] for lang in langs}
        units = [per_lang[lang][i] for i in range(args.questions) for lang in langs]
        gold = {q.id: q.gold for q in units}
        for mode in args.modes.split(","):
            rag = SelfRag(gen, retriever if mode != "never" else None,
                          SelfRagConfig(retrieval=mode, top_k=args.k), gen_cfg,
                          critique_without_passage=not args.no_critique_zero_shot)
            path = out / f"{name}-{mode}.jsonl"
            had = sum(1 for line in path.open(encoding="utf-8") if line.strip()) if path.is_file() else 0
            started = time.time()
            keys = {(q.id, q.lang) for q in units}
            gens = [g for g in sample_units(rag, units, path, 1) if (g.question_id, g.lang) in keys]  # a longer run may share the file
            answered = len(gens) - had  # units answered by this call (a torn batch is redone: at least this many)
            rep = evaluate_generations(gens, gold, langs=langs)
            free = {lang: sum(g.letter is not None and not g.completed for g in gens if g.lang == lang)
                    / max(1, sum(g.lang == lang for g in gens)) for lang in langs}
            letters = [g.letter for g in gens if g.letter]
            shares = {k: letters.count(k) / max(1, len(letters)) for k in sorted(set(letters))}
            rows.append((name, mode, index if mode != "never" else "-", rep, free, time.time() - started, answered,
                         shares))
            (out / f"{name}-{mode}.report.json").write_text(json.dumps({**rep.to_dict(), "free_parse_rate": free,
                                                                        "letter_shares": shares}, indent=1))
        deltas.append((name, retrieval_effect(out / f"{name}-never.jsonl", out / f"{name}-always.jsonl", units,
                                              gold, langs)))
    print(f"model {args.model}, critique {rag.mode}, k={args.k}, {args.questions} questions per set and language, "
          f"greedy, max_new_tokens {args.max_new_tokens}, {args.units_per_batch} units per batch")
    head = " | ".join(f"{lang} parsed | {lang} acc" for lang in langs)
    print(f"| set | retrieval | index | {head} | vote acc | consistency | letters | seconds/unit |")
    print("|---|---|---|" + "---:|" * (2 * len(langs) + 2) + "---|---:|")
    for name, mode, index, rep, free, secs, n, shares in rows:
        per_unit = f"{secs / n:.1f}" if n > 0 else "-"  # nothing answered: every unit was on disk
        cells = " | ".join(f"{100 * free[lang]:.0f}% | {100 * rep.accuracy[lang]:.1f}" for lang in langs)
        mix = " ".join(f"{k} {100 * v:.0f}%" for k, v in shares.items())
        print(f"| {name} | {mode} | {Path(index).name if index != '-' else '-'} | {cells} | "
              f"{100 * rep.vote_accuracy:.1f} | {100 * (rep.consistency or 0):.1f} | {mix} | {per_unit} |")
    for name, effect in deltas:
        if effect:
            print(f"{name}, always - never, paired bootstrap over the {args.questions} questions (1000 resamples, "
                  "95% interval): " + "; ".join(f"{m} {100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
                                               for m, (d, lo, hi) in effect.items()))


def retrieval_effect(never: Path, always: Path, units, gold, langs) -> dict | None:
    """Paired-bootstrap change from no retrieval to retrieval, when both runs cover these units."""
    from calm_rag.evaluate import bootstrap_deltas, table_metrics
    from calm_rag.records import Generation, read_jsonl

    keys = {(q.id, q.lang) for q in units}
    runs = [[g for g in read_jsonl(f, Generation) if (g.question_id, g.lang) in keys] if f.is_file() else []
            for f in (never, always)]
    if any({(g.question_id, g.lang) for g in run} != keys for run in runs):
        return None
    return bootstrap_deltas(runs[0], runs[1], gold, table_metrics(langs), langs=langs)


if __name__ == "__main__":
    main()
