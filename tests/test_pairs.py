"""Preference pairs: who is chosen, who is rejected, translation fallback, no passages."""

from __future__ import annotations

import json

import pytest

from calm_rag.pairs import build_pairs, strip_passages, write_pairs
from calm_rag.records import Critique, Generation, PreferencePair, read_jsonl
from calm_rag.vote import vote_all

PASSAGE = "<paragraph>Dental Clinic\nPatients come from schools.</paragraph>"


def g(lang, letter, sample, qid="q", score=0.0, passage=True):
    body = f"{lang} explanation {sample}[Relevant] Answer: {letter}[Utility:4]"
    text = f"[Retrieval]{PASSAGE}{body}" if passage else body
    return Generation(question_id=qid, lang=lang, sample=sample, text=text, letter=letter,
                      critique=Critique(score=score), prompt=f"### Instruction:\n{qid} in {lang}\n\n### Response:\n")


GENS = [
    g("en", "A", 0, score=0.1), g("en", "A", 1, score=0.7), g("en", "B", 2),
    g("fr", "B", 0), g("fr", None, 1), g("fr", "C", 2),
    g("zh", "A", 0), g("zh", "A", 1), g("zh", "A", 2),
]


def test_chosen_agrees_each_disagreeing_one_is_rejected():
    votes = vote_all(GENS)
    assert votes["q"].winner == "A"
    pairs, report = build_pairs(GENS, votes, langs=["en", "fr", "zh"])
    en = [p for p in pairs if p.lang == "en"]
    assert len(en) == 1 and "en explanation 1" in en[0].chosen  # highest critique score among agreeing
    assert "en explanation 2" in en[0].rejected and en[0].chosen_source == "sample"
    assert en[0].prompt == GENS[2].prompt
    # fr has no agreeing sample and no translator: skipped and counted; unparseable not rejected
    assert report.per_lang["fr"].skipped_no_chosen == 1 and report.per_lang["fr"].pairs == 0
    assert report.per_lang["fr"].unparseable_skipped == 1
    assert report.per_lang["zh"].all_agree == 1 and report.per_lang["zh"].pairs == 0
    assert report.total() == len(pairs) == 1


def test_pairs_never_contain_passages():
    pairs, _ = build_pairs(GENS, vote_all(GENS), translate=lambda t, s, d: f"[{d}] {t} {PASSAGE}",
                           unparseable="reject")
    assert pairs
    for p in pairs:
        for text in (p.chosen, p.rejected):
            assert "<paragraph>" not in text and "</paragraph>" not in text and "Patients come from" not in text
            assert "[Retrieval]" in text and "[Relevant]" in text  # reflection tokens are kept


def test_strip_passages_handles_unclosed_and_stray_tags():
    assert strip_passages("a<paragraph>x</paragraph>b<paragraph>y</paragraph>c") == "abc"
    assert strip_passages("keep<paragraph>never closed") == "keep"
    assert strip_passages("x</paragraph>y") == "xy"


def test_translation_fallback_called_with_the_right_languages():
    calls = []

    def translate(text, src, tgt):
        calls.append((text, src, tgt))
        return f"TRANSLATED({tgt}) {text}"

    pairs, report = build_pairs(GENS, vote_all(GENS), langs=["en", "fr", "zh"], translate=translate,
                                unparseable="reject")
    assert len(calls) == 1
    text, src, tgt = calls[0]
    assert (src, tgt) == ("en", "fr")  # best agreeing response overall: en sample 1 (score 0.7)
    assert "en explanation 1" in text and "<paragraph>" not in text
    fr = [p for p in pairs if p.lang == "fr"]
    assert len(fr) == 3  # B, C and the unparseable one (unparseable="reject")
    assert all(p.chosen_source == "translation" and p.chosen.startswith("TRANSLATED(fr)") for p in fr)
    assert {p.prompt for p in fr} == {GENS[3].prompt}
    assert report.per_lang["fr"].from_translation == 3


def test_no_winner_no_pairs_and_prompt_for():
    gens = [g("en", "A", 0), g("en", "B", 1)]
    pairs, report = build_pairs(gens, vote_all(gens, tie_break="none"))
    assert pairs == [] and report.no_winner == 1
    pairs, _ = build_pairs(gens, vote_all(gens), prompt_for=lambda x: f"P-{x.lang}")
    assert [p.prompt for p in pairs] == ["P-en"]


def test_write_pairs_jsonl(tmp_path):
    pairs, _ = build_pairs(GENS, vote_all(GENS))
    path = tmp_path / "out" / "pairs.jsonl"
    assert write_pairs(path, pairs) == len(pairs)
    assert list(read_jsonl(path, PreferencePair)) == pairs
    write_pairs(path, pairs, trl_columns_only=True)
    row = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert set(row) == {"prompt", "chosen", "rejected"}
    assert not list(tmp_path.glob("out/.*"))  # no temp file left behind


def test_bad_unparseable_option():
    with pytest.raises(ValueError, match="unparseable"):
        build_pairs(GENS, vote_all(GENS), unparseable="maybe")
