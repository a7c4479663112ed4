"""Pick DPO's hyperparameters for a run on the validation slice of the train split (calm_rag.sweep).

    python scripts/sweep_dpo.py runs/calm-xcsqa-6lang --val splits/xcsqa-val.json --max-questions 30 \
        --arm beta=0.1,learning_rate=5e-5,max_steps=30 --arm beta=0.3,learning_rate=5e-5,max_steps=30 \
        --out docs/results/sweep-calm-xcsqa-6lang.json

Each --arm changes the run's `train` settings; the base model and every arm answer the slice's questions
in the run's eval languages, and the JSON names the winner. Rerunning resumes (DPO checkpoints, evaluation
folders under RUN/sweep/). Never pass the dev split: the script refuses validation questions the run trained on.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from calm_rag.sweep import parse_arm, run_sweep, score  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a run folder with pairs.jsonl (calm-rag calm pairs)")
    p.add_argument("--val", required=True, help="validation split file (splits/<set>-val.json)")
    p.add_argument("--arm", action="append", required=True, help="TrainConfig changes, e.g. beta=0.1,max_steps=30")
    p.add_argument("--max-questions", type=int, help="grade the first N validation questions")
    p.add_argument("--out", required=True, help="the sweep's JSON (e.g. docs/results/sweep-RUN.json)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("calm_rag").setLevel(logging.INFO)  # DPO's step lines are the sweep's progress
    try:
        result = run_sweep(args.run, [parse_arm(a) for a in args.arm], args.val, args.out, args.max_questions)
    except ValueError as exc:
        print(f"sweep_dpo: error: {exc}", file=sys.stderr)
        return 2
    base = result["base"]
    print("| arm | mean acc | consistency | vote acc | answer chars | score |\n|---|---:|---:|---:|---:|---:|")
    for name, v in [("base", base)] + [(n, arm["val"]) for n, arm in result["arms"].items()]:
        note = " (collapsed: not eligible)" if name in result.get("collapsed", []) else ""
        print(f"| {name}{note} | {100 * v['mean_accuracy']:.1f} | {100 * v['consistency']:.1f} | "
              f"{100 * v['vote_accuracy']:.1f} | {v['mean_answer_chars']:.0f} | {score(v):.3f} |")
    chosen = result.get("chosen")
    print(f"chosen: {chosen}  (written to {args.out})")
    if chosen:  # the winner is already trained on the run's pairs: it can be the run's adapter as it is
        changes = ", ".join(f"{k}: {v}" for k, v in result["arms"][chosen]["changes"].items())
        print(f"to train the run with it: set train: {{{changes}}} in the run's YAML; to skip training it again: "
              f"cp -r {Path(args.run) / 'sweep' / chosen} {Path(args.run) / 'train'} (calm train then finds its "
              f"last checkpoint done)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
