"""The training signal of a run folder that is still sampling (calm_rag.pipeline.signal_so_far): read-only.

    python scripts/signal_so_far.py runs/calm-xcsqa-6lang [--vote weighted] [--min-agreement 0.5] [--json]

Counts only the training questions sampled in every language, so the numbers are the ones the pairs stage
will print for those questions: is the cross-lingual vote right more often than one language's answer?
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from calm_rag.config import VOTES  # noqa: E402
from calm_rag.pipeline import signal_so_far  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a run folder (manifest.json, questions.jsonl, generations.jsonl)")
    p.add_argument("--vote", choices=VOTES, help="the vote to count (default: the run's)")
    p.add_argument("--min-agreement", type=float, help="count only questions whose winner holds this share of votes")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        sig = signal_so_far(args.run, args.vote, args.min_agreement)
    except ValueError as exc:
        print(f"signal_so_far: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(sig, indent=2))
        return 0
    acc = sig["sample_accuracy"]
    mean = sum(acc.values()) / len(acc) if acc else None
    print(f"{sig['complete']} of {sig['of']} training questions sampled in every language (vote {sig['vote']})")
    if sig["with_gold"]:
        print(f"vote accuracy {100 * sig['vote_accuracy']:.1f} % ({sig['vote_right']}/{sig['with_gold']}), "
              f"chance {100 * sig['chance']:.1f} %, mean sample accuracy {100 * mean:.1f} %")
        print("sample accuracy: " + ", ".join(f"{k} {100 * v:.1f} %" for k, v in acc.items()))
    kept = sig.get("min_agreement")
    if kept and kept["with_gold"]:
        print(f"min_agreement {kept['threshold']}: {kept['questions']} questions kept, vote right on "
              f"{100 * kept['vote_accuracy']:.1f} % ({kept['vote_right']}/{kept['with_gold']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
