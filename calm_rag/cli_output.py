"""What the `calm-rag` subcommands print: JSON documents and the training signal of the pairs stage.
Printing lives in the CLI layer only (the library logs); this is the CLI's output half, split from cli.py."""

from __future__ import annotations

import json
import sys


def print_json(data: object) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2))


def print_reports_json(reports: dict) -> None:
    """Evaluation reports as JSON: the first row's set-level metrics on top, every row's report under "reports"."""
    name, first = next(iter(reports.items()))
    print_json({"run": name, "consistency": first.consistency, "mean_accuracy": first.mean_accuracy,
                 "vote_accuracy": first.vote_accuracy, "accuracy": first.accuracy,
                 "reports": {n: r.to_dict() for n, r in reports.items()}})


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def print_signal(record: dict) -> None:
    """The pairs stage's training signal, before DPO; a warning when the vote is no better than chance."""
    from calm_rag.vote import weak_signal

    sig = record["signal"]
    print(f"training signal (calm.vote={sig.get('vote', 'majority')}), {sig['with_gold']} of {sig['questions']} "
          f"training question(s) with gold:")
    print(f"  vote accuracy {_pct(sig['vote_accuracy'])} ({sig['vote_right']}/{sig['with_gold']}), chance "
          f"{_pct(sig['chance'])}; no winner: {sig['no_winner']}")
    print("  sample accuracy: " + (", ".join(f"{k} {_pct(v)}" for k, v in sig["sample_accuracy"].items()) or "-"))
    share = sig["winner_share"]
    bins = ", ".join(f"{k}: {b['questions']} ({b['right']}/{b['with_gold']} right)"
                     for k, b in share["bins"].items() if b["questions"])
    print(f"  winner's vote share: mean {share['mean'] or 0:.2f}, median {share['median'] or 0:.2f}; {bins or '-'}")
    if "min_agreement" in sig:
        kept = sig["min_agreement"]
        print(f"  min_agreement {kept['threshold']}: {kept['questions']} question(s) kept, vote accuracy "
              f"{_pct(kept['vote_accuracy'])} ({kept['vote_right']}/{kept['with_gold']})")
    print("  pairs per language: " + ", ".join(f"{k} {v}" for k, v in record["per_lang"].items())
          + f" ({record['pairs']} in all; translated chosen: {record.get('translated', 0)}, "
            f"{_pct(record.get('translated_share', 0.0))}; translations dropped for another or no letter: "
            f"{record.get('translations_dropped', 0)})")
    if weak_signal(sig):
        print(f"calm-rag: warning: the cross-lingual vote is right on {sig['vote_right']}/{sig['with_gold']} training "
              f"questions ({_pct(sig['vote_accuracy'])}), no better than chance ({_pct(sig['chance'])}): DPO would "
              f"train toward noise; try --min-agreement, --vote weighted, more samples (-n) or more languages",
              file=sys.stderr)
