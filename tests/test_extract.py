"""extract_choice against hand-written outputs in six languages, plus a floor on real model samples."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from calm_rag.languages import DEFAULT_LANGS, UnknownLanguageError
from calm_rag.selfrag import extract_choice

CASES_PATH = Path(__file__).parent / "data" / "extraction_cases.jsonl"
CASES = [json.loads(line) for line in CASES_PATH.read_text(encoding="utf-8").splitlines() if line.strip()]
XCSQA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "xcsqa"


def test_case_file_covers_what_it_claims():
    per_lang = Counter(c["lang"] for c in CASES)
    assert len(CASES) >= 180
    assert all(per_lang[lang] >= 25 for lang in DEFAULT_LANGS), per_lang
    assert sum(c["expected"] is None for c in CASES) >= 30
    sizes = {len(c["options"]) for c in CASES}
    assert {4, 5} <= sizes
    for c in CASES:
        assert c["expected"] is None or c["expected"] in c["options"], c


@pytest.mark.parametrize("case", CASES, ids=[f"{i}-{c['lang']}" for i, c in enumerate(CASES, 1)])
def test_case(case):
    assert extract_choice(case["text"], case["lang"], case["options"]) == case["expected"]


def test_no_false_letters_and_full_accuracy():
    got = [(extract_choice(c["text"], c["lang"], c["options"]), c["expected"]) for c in CASES]
    false_letters = [g for g, e in got if g is not None and g != e]
    assert false_letters == []
    assert sum(g == e for g, e in got) == len(CASES)


def test_options_given_as_text_list_letter_list_or_none():
    texts = ["kitchen", "garage", "library", "bakery", "post office"]
    assert extract_choice("Answer: post office", "en", texts) == "E"
    assert extract_choice("Answer: D", "en", ["A", "B", "C", "D"]) == "D"
    assert extract_choice("Answer: E", "en", ["A", "B", "C", "D"]) is None
    assert extract_choice("Answer: E", "en", None) == "E"  # None: letters A-E
    assert extract_choice("Answer: library", "en", None) is None  # no texts to match


def test_bad_inputs_raise():
    with pytest.raises(UnknownLanguageError):
        extract_choice("Answer: A", "xx", None)
    with pytest.raises(ValueError, match="not a letter"):
        extract_choice("Answer: A", "en", {"first": "x"})


def test_letter_inside_option_text_is_not_a_second_answer():
    opts = {"A": "Vitamin B12", "B": "Vitamin D", "C": "Folate", "D": "Iron"}
    assert extract_choice("Answer: (B) Vitamin D", "en", opts) == "B"
    assert extract_choice("Answer: A. Vitamin B12 (not D)", "en", opts) is None


def test_passage_text_cannot_answer_for_the_model():
    opts = {"A": "x", "B": "y", "C": "z", "D": "w"}
    text = "[Retrieval]<paragraph>Quiz\nAnswer: A</paragraph>[Irrelevant]I do not know.[No support / Contradictory]"
    assert extract_choice(text, "en", opts) is None


def _options_of(input_text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"^\s*([A-E])\.\s*(.*?)\s*$", input_text, re.MULTILINE)}


@pytest.mark.parametrize("lang", DEFAULT_LANGS)
def test_real_llama_samples_mostly_parse(lang):
    """The CALM release's Llama samples follow the requested format: nearly all must parse."""
    path = XCSQA / "train" / f"{lang}.json"
    if not path.exists():
        pytest.skip(f"{path} not found: the CALM data lives in ../shared/data/xcsqa")
    items = json.loads(path.read_text(encoding="utf-8"))[:200]
    letters = [extract_choice(p, lang, _options_of(it["input"])) for it in items for p in it["pred"]]
    assert sum(x is not None for x in letters) / len(letters) >= 0.95
