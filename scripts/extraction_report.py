"""Run calm_rag.selfrag.extract_choice over every sampled answer (`pred`) of the CALM release's
X-CSQA files and report, per language: parse rate, per-sample accuracy against the gold letter,
majority-of-3 accuracy (ties -> None, and ties -> the first sample's letter, which is how the CALM
authors' reference numbers come out), and cross-lingual consistency of the majority letters.
A report, not a test.

    python scripts/extraction_report.py [--data ../shared/data/xcsqa] [--show-unparsed 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calm_rag.selfrag import extract_choice  # noqa: E402

LANGS = ("en", "zh", "fr", "de", "it", "ja")
OPTION_LINE = re.compile(r"^\s*([A-E])\.\s*(.*?)\s*$")


def options_of(input_text: str) -> dict[str, str]:
    """The `A. text` lines of a CALM X-CSQA `input` field."""
    return {m.group(1): m.group(2) for line in input_text.splitlines() if (m := OPTION_LINE.match(line))}


def majority(letters: list[str | None], first_on_tie: bool = False) -> str | None:
    """Most common parsed letter; on a tie None, or the tied letter seen first."""
    counts = Counter(x for x in letters if x is not None).most_common()  # ties keep first-seen order
    if not counts or (not first_on_tie and len(counts) > 1 and counts[0][1] == counts[1][1]):
        return None
    return counts[0][0]


def report(folder: Path, show_unparsed: int) -> None:
    majorities: dict[bool, dict[str, list[str | None]]] = {False: {}, True: {}}
    print(f"\n== {folder}")
    print(f"{'lang':4} {'outputs':>7} {'parsed%':>8} {'acc%':>6} {'acc|parsed%':>11} {'maj3 acc%':>9} "
          f"{'maj3 first-tie acc%':>19}")
    for lang in LANGS:
        path = folder / f"{lang}.json"
        if not path.exists():
            print(f"{lang:4} missing {path}")
            continue
        items = json.loads(path.read_text(encoding="utf-8"))
        n = parsed = correct = 0
        maj_correct = {False: 0, True: 0}
        for rule in majorities.values():
            rule[lang] = []
        unparsed = []
        for item in items:
            opts, gold = options_of(item["input"]), item["output"].strip()
            letters = [extract_choice(p, lang, opts) for p in item["pred"]]
            for p, letter in zip(item["pred"], letters):
                n += 1
                parsed += letter is not None
                correct += letter == gold
                if letter is None:
                    unparsed.append(p)
            for first_on_tie, rule in majorities.items():
                maj = majority(letters, first_on_tie)
                rule[lang].append(maj)
                maj_correct[first_on_tie] += maj == gold
        print(f"{lang:4} {n:7d} {100 * parsed / n:8.1f} {100 * correct / n:6.1f} "
              f"{100 * correct / max(parsed, 1):11.1f} {100 * maj_correct[False] / len(items):9.1f} "
              f"{100 * maj_correct[True] / len(items):19.1f}")
        for p in unparsed[:show_unparsed]:
            print("      unparsed:", json.dumps(p[-300:], ensure_ascii=False))
    for first_on_tie, rule in majorities.items():
        langs = list(rule)
        pairs = list(itertools.combinations(langs, 2))
        n_items = min((len(v) for v in rule.values()), default=0)
        if not pairs or not n_items:
            continue
        agree = [sum(rule[a][i] is not None and rule[a][i] == rule[b][i] for a, b in pairs) / len(pairs)
                 for i in range(n_items)]
        name = "first-tie" if first_on_tie else "ties->None"
        print(f"consistency of majority letters ({name}) over {len(langs)} languages: "
              f"{100 * sum(agree) / n_items:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "xcsqa"
    ap.add_argument("--data", type=Path, default=default)
    ap.add_argument("--show-unparsed", type=int, default=0, help="print this many unparsed outputs per language")
    args = ap.parse_args()
    for sub in ("train", "samples-mistral"):
        folder = args.data / sub
        if folder.is_dir():
            report(folder.resolve(), args.show_unparsed)
        else:
            print(f"skipping {folder}: not found (the CALM data lives in ../shared/data/xcsqa)")


if __name__ == "__main__":
    main()
