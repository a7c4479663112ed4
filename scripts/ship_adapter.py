"""Make a finished run's adapter a packaged one: calm_rag/data/adapters/<name>/ (calm_rag.adapters.export_adapter).

    python scripts/ship_adapter.py runs/calm-xcsqa-6lang --name calm-xcsqa-6lang \
        --metrics docs/results/calm-xcsqa-6lang.json

Writes the fp16 LoRA weights, an adapter_config.json naming the base generator by its packaged name, and
calm_rag_adapter.json with the run's config and its evaluation (the set-level metrics of each evaluated row and
the CALM - base deltas of the results report; null before the run is evaluated) and the DPO step it was saved at.
Refuses a folder over 5 MB: the package must stay small.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from calm_rag.adapters import PACKAGED_ADAPTERS_DIR, export_adapter, sidecar_steps  # noqa: E402
from calm_rag.evaluate import EvalReport  # noqa: E402

LIMIT = 5 * 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a finished run folder (train/adapter, manifest.json)")
    p.add_argument("--name", required=True, help="the packaged name, e.g. calm-xcsqa-6lang")
    p.add_argument("--metrics", help="the run's results JSON (scripts/results_report.py); without it the sidecar "
                   "says the adapter is not evaluated yet (ship again with --metrics once it is)")
    p.add_argument("--checkpoint", type=int, metavar="STEP",
                   help="ship the DPO checkpoint saved at this step (train/checkpoints/checkpoint-STEP) instead of the "
                        "finished adapter, for a training the session cut short; the sidecar records the step")
    p.add_argument("--into", default=str(PACKAGED_ADAPTERS_DIR), help="the package's adapters folder")
    args = p.parse_args(argv)
    run = Path(args.run)
    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    evaluation, deltas = None, None  # not evaluated yet
    if args.metrics:
        results = json.loads(Path(args.metrics).read_text(encoding="utf-8"))
        evaluation = {name: {"consistency": r["consistency"], "mean_accuracy": EvalReport.from_dict(r).mean_accuracy,
                             "vote_accuracy": r["vote_accuracy"], "accuracy": r["accuracy"],
                             "n_questions": r["n_questions"]} for name, r in results["reports"].items()}
        deltas = {k: v["metrics"] for k, v in results["deltas"].items() if k.startswith("calm-") and "vs base-" in k}
    src, steps = run / "train" / "adapter", manifest.get("stages", {}).get("train", {}).get("steps")
    if args.checkpoint is not None:
        src, steps = run / "train" / "checkpoints" / f"checkpoint-{args.checkpoint}", args.checkpoint
    if steps is None:  # a run folder restored from a shipped adapter
        steps = sidecar_steps(src)
    if not (src / "adapter_model.safetensors").is_file():
        print(f"ship_adapter: error: {src} holds no adapter_model.safetensors; finish the run's train stage, or name "
              f"a saved step with --checkpoint", file=sys.stderr)
        return 2
    out = export_adapter(src, Path(args.into) / args.name, manifest["config"]["model"]["generator"],
                         run=run.name, config=manifest["config"], steps=steps, evaluation=evaluation, deltas=deltas,
                         versions=manifest.get("versions", {}))
    size = sum(f.stat().st_size for f in out.iterdir())
    if size > LIMIT:
        shutil.rmtree(out)  # nothing oversized is left in the package
        print(f"ship_adapter: error: {out} is {size / 2**20:.1f} MB, over 5 MB; train with a smaller "
              f"train.lora_r or fewer train.lora_targets", file=sys.stderr)
        return 2
    print(f"{out}: {size / 2**20:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
