"""Run calm_rag.selfrag.extract_choice over every sampled answer (`pred`) of the CALM release's
X-CSQA files and report, per language: parse rate, per-sample accuracy against the gold letter,
majority-of-3 accuracy, and cross-lingual consistency of the majority letters. A report, not a test.

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


def majority(letters: list[str | None]) -> str | None:
    """Most common parsed letter; None when nothing parsed or the top is tied."""
    counts = Counter(x for x in letters if x is not None).most_common()
    if not counts or (len(counts) > 1 and counts[0][1] == counts[1][1]):
        return None
    return counts[0][0]


def report(folder: Path, show_unparsed: int) -> None:
    majorities: dict[str, list[str | None]] = {}
    print(f"\n== {folder}")
    print(f"{'lang':4} {'outputs':>7} {'parsed%':>8} {'acc%':>6} {'acc|parsed%':>11} {'maj3 acc%':>9}")
    for lang in LANGS:
        path = folder / f"{lang}.json"
        if not path.exists():
            print(f"{lang:4} missing {path}")
            continue
        items = json.loads(path.read_text(encoding="utf-8"))
        n = parsed = correct = maj_correct = 0
        majorities[lang] = []
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
            maj = majority(letters)
            majorities[lang].append(maj)
            maj_correct += maj == gold
        print(f"{lang:4} {n:7d} {100 * parsed / n:8.1f} {100 * correct / n:6.1f} "
              f"{100 * correct / max(parsed, 1):11.1f} {100 * maj_correct / len(items):9.1f}")
        for p in unparsed[:show_unparsed]:
            print("      unparsed:", json.dumps(p[-300:], ensure_ascii=False))
    langs = [lang for lang in LANGS if lang in majorities]
    pairs = list(itertools.combinations(langs, 2))
    n_items = min(len(v) for v in majorities.values()) if majorities else 0
    if pairs and n_items:
        agree = [sum(majorities[a][i] is not None and majorities[a][i] == majorities[b][i] for a, b in pairs) / len(pairs)
                 for i in range(n_items)]
        print(f"consistency of majority letters over {len(langs)} languages: {100 * sum(agree) / n_items:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "xcsqa")
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
