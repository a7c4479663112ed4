"""The results report of finished CALM runs: one markdown section, one metrics JSON and one PNG per run.

For each run folder (what `calm-rag calm run CONFIG --run DIR` leaves) it reads the manifest
(config, seeds, pairs per language, stage timings) and the evaluation's generations, and
reports accuracy per language, vote accuracy and consistency for every evaluated model and
retrieval mode, plus paired-bootstrap changes over the eval questions (95 % interval):
CALM - base per retrieval mode, and retrieval - zero-shot for the CALM model.

    python scripts/results_report.py runs/xcsqa-6lang --out docs/results
    python scripts/results_report.py runs/* --out docs/results --n-boot 2000
    python scripts/results_report.py --ablation docs/results/xcsqa-ablation-{2,3}.json docs/results/xcsqa-6lang.json \
        --plot docs/results/ablation.png
    python scripts/results_report.py --ablation docs/results/calm-xcsqa-ablation-{2,3}.json \
        docs/results/calm-xcsqa-6lang.json --comparison "calm-never vs base-never" \
        --base docs/results/calm-xcsqa-6lang-step15.json:base-never --plot docs/results/calm-xcsqa-ablation.png
    python scripts/results_report.py --compare docs/results/calm-xcsqa-6lang-step15.json:base-never \
        docs/results/calm-xcsqa-6lang.json:calm-never --save docs/results/calm-xcsqa-6lang-vs-step15-base.json
    python scripts/results_report.py --eval-folder runs/eval/shipped-always --save docs/results/shipped-always.json

`--eval-folder` turns a `calm-rag calm eval --data ... --out DIR` folder (no run folder, e.g. a packaged
adapter) into such a metrics JSON, which `--compare` then pairs with a run's base.

Writes `<out>/<run>.md`, `<out>/<run>.json` (small: metrics, deltas and the graded letters; no prompts
or models) and `<out>/<run>.png`; prints the markdown. `docs/results.md` quotes these sections.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from calm_rag.report import (ablation_arms, ablation_plot, ablation_table, compare_metrics_files,  # noqa: E402
                             files_metrics, run_section)
from calm_rag.records import atomic_write_text  # noqa: E402


def model_in_file(spec: str) -> tuple[Path, str]:
    """FILE.json:NAME -> (FILE.json, NAME)."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise argparse.ArgumentTypeError(f"{spec!r}: give METRICS.json:MODEL, e.g. docs/results/run.json:base-never")
    return Path(path), name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", type=Path, help="run folders with a finished eval stage")
    ap.add_argument("--ablation", nargs="+", type=Path, metavar="JSON",
                    help="instead: one table of CALM - base (retrieval always) over these metrics files")
    ap.add_argument("--plot", type=Path, help="with --ablation: also a PNG of the changes and their intervals")
    ap.add_argument("--comparison", default="calm-always vs base-always",
                    help="with --ablation: the change compared, e.g. 'calm-never vs base-never' for zero-shot runs")
    ap.add_argument("--base", type=model_in_file, metavar="FILE.json:MODEL",
                    help="with --ablation: compare each arm's model (the first of --comparison) with this model of "
                         "another metrics file, from the graded letters (arms graded with calm eval --models calm)")
    ap.add_argument("--compare", nargs=2, type=model_in_file, metavar="FILE.json:MODEL",
                    help="instead: paired-bootstrap change from the first model to the second, from two metrics files' "
                         "graded letters (a CALM model graded in a later session than its base)")
    ap.add_argument("--eval-folder", type=Path, metavar="DIR",
                    help="instead: the metrics JSON (written to --save) of a `calm eval --data ... --out DIR` folder")
    ap.add_argument("--save", type=Path, help="with --compare: also write the change as JSON here; with "
                                              "--eval-folder: the metrics JSON's path")
    ap.add_argument("--out", type=Path, default=Path("docs/results"))
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.eval_folder:
        if not args.save:
            ap.error("--eval-folder needs --save FILE.json (where the metrics JSON goes)")
        data = files_metrics(args.eval_folder, args.save)
        print(f"{args.save}: rows {', '.join(data['reports'])}, {len(data['gold'])} questions")
        return
    if args.compare:
        text, data = compare_metrics_files(*args.compare, n_boot=args.n_boot, seed=args.seed)
        print(text)
        if args.save:
            atomic_write_text(args.save, json.dumps(data, indent=2) + "\n")
        return
    if args.ablation:
        arms = ablation_arms(args.ablation, args.comparison, args.base)
        print(ablation_table(arms))
        if args.plot:
            ablation_plot(arms, args.plot, args.comparison)
        return
    if not args.runs:
        ap.error("give run folders, or --ablation with metrics files")
    args.out.mkdir(parents=True, exist_ok=True)
    for folder in args.runs:
        print(run_section(folder, args.out, args.n_boot, args.seed))


if __name__ == "__main__":
    main()
