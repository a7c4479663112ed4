"""Preference pairs: who is chosen, who is rejected, translation fallback, on-policy texts, agreement filter."""

from __future__ import annotations

import json

import pytest

from calm_rag.pairs import build_pairs, write_pairs
from calm_rag.records import Critique, Generation, PreferencePair, read_jsonl
from calm_rag.vote import vote_all

PASSAGE = "[Retrieval]<paragraph>Dental Clinic\nPatients come from schools.</paragraph>"


def g(lang, letter, sample, qid="q", score=0.0, passage=True):
    # a raw completion as sampled: odd spacing and the model's own tokens stay as they are
    text = f" {lang} explanation {sample}[Relevant] Answer: {letter}[Utility:4]\n"
    prompt = f"### Instruction:\n{qid} in {lang}\n\n### Response:\n" + (PASSAGE if passage else "")
    return Generation(question_id=qid, lang=lang, sample=sample, text=text, letter=letter,
                      critique=Critique(score=score), prompt=prompt)


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


def test_chosen_and_rejected_are_sampled_texts_byte_for_byte():
    """On-policy: never re-rendered, stripped or rewritten; passages stay in the prompt."""
    pairs, report = build_pairs(GENS, vote_all(GENS), translate=lambda t, s, d: f"[{d}] {t}", unparseable="reject")
    sampled = {x.text for x in GENS}
    assert pairs
    for p in pairs:
        assert p.rejected in sampled
        assert p.chosen in sampled if p.chosen_source == "sample" else p.chosen.startswith("[fr] ")
        assert PASSAGE in p.prompt and "<paragraph>" not in p.chosen + p.rejected
    assert report.translated() == 3 and report.translated_share() == pytest.approx(3 / len(pairs))


def test_chosen_prefers_the_rejected_ones_prompt():
    """With retrieval, samples of one language answer from different passages: the chosen comes from the
    rejected response's own prompt when an agreeing response has it, else from another (counted)."""
    gens = [g("en", "A", 0, score=0.9), g("en", "A", 1, score=0.1), g("en", "B", 2), g("en", "B", 3)]
    gens[1] = Generation(**{**gens[1].__dict__, "prompt": "P1"})
    gens[2] = Generation(**{**gens[2].__dict__, "prompt": "P1"})
    gens[3] = Generation(**{**gens[3].__dict__, "prompt": "P3"})
    pairs, report = build_pairs(gens, vote_all(gens, tie_break="critique"))
    by_prompt = {p.prompt: p for p in pairs}
    assert by_prompt["P1"].chosen == gens[1].text  # same prompt, though another sample scored higher
    assert by_prompt["P3"].chosen == gens[0].text and report.per_lang["en"].prompt_differs == 1


def test_min_agreement_keeps_only_confident_votes():
    gens = GENS + [g("en", "A", 0, qid="r"), g("fr", "B", 0, qid="r"), g("zh", "C", 0, qid="r"),
                   g("zh", "A", 1, qid="r")]
    votes = vote_all(gens)
    assert votes["q"].winner == "A" and votes["r"].winner == "A"  # q: 6 of 8 votes; r: 2 of 4
    all_pairs, rep = build_pairs(gens, votes)
    assert {p.question_id for p in all_pairs} == {"q", "r"} and rep.kept == 2 and rep.below_agreement == 0
    kept, rep = build_pairs(gens, votes, min_agreement=0.6)
    assert {p.question_id for p in kept} == {"q"} and (rep.kept, rep.below_agreement) == (1, 1)
    assert build_pairs(gens, votes, min_agreement=0.5)[1].kept == 2  # "at least": a share of exactly 0.5 stays
    assert build_pairs(gens, votes, min_agreement=0.0)[0] == all_pairs
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"pairs\.min_agreement=.*\[0, 1\]"):
            build_pairs(gens, votes, min_agreement=bad)


def test_blank_completions_are_left_out():
    gens = [g("en", "A", 0), g("en", "A", 3), g("en", "B", 1), Generation("q", "en", 2, " \n", "B", prompt=GENS[0].prompt)]
    pairs, report = build_pairs(gens, vote_all(gens))
    assert [p.rejected for p in pairs] == [gens[2].text] and report.per_lang["en"].blank_skipped == 1


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
    assert text == GENS[1].text  # the source's raw completion
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


def test_translations_are_asked_for_in_one_batch():
    """A translator with `many` gets every translation the pairs need in one call; the pairs are the same."""
    class Batch:
        calls: list[list[tuple[str, str, str]]] = []

        def __call__(self, *request):
            raise AssertionError("translated one at a time")

        def many(self, requests):
            self.calls.append(list(requests))
            return [f"[{tgt}] {text}" for text, src, tgt in requests]

    batched, report = build_pairs(GENS, vote_all(GENS), translate=Batch(), unparseable="reject")
    one_by_one, _ = build_pairs(GENS, vote_all(GENS), translate=lambda t, s, d: f"[{d}] {t}", unparseable="reject")
    assert len(Batch.calls) == 1 and len(Batch.calls[0]) == 1 and report.translated() == 3  # one chosen, 3 pairs
    assert batched == one_by_one


def test_a_translation_must_name_the_winning_letter():
    """A translated chosen that names no letter or another one is dropped and counted; from a source whose
    letter came from the answer-cue step (its text names none) a translation naming none is kept."""
    gens = [g("en", "A", i, qid="q", score=0.9 - i / 10) for i in range(4)] + [
        g("fr", "B", 0, qid="q"), g("de", "B", 0, qid="q"), g("zh", "B", 0, qid="q")]  # A wins, 4 votes to 3
    replies = {"fr": " fr Réponse : A[Utility:4]", "de": "B", "zh": "答案很长，但没有选项"}
    pairs, report = build_pairs(gens, vote_all(gens, tie_break="critique"), langs=["en", "fr", "de", "zh"],
                                translate=lambda text, src, tgt: replies[tgt])
    assert [(p.lang, p.chosen) for p in pairs] == [("fr", replies["fr"])]  # de answered another letter, zh none
    assert report.per_lang["de"].translation_rejected == 1 and report.per_lang["zh"].translation_rejected == 1
    assert report.per_lang["de"].skipped_no_chosen == 1 and report.per_lang["fr"].translation_rejected == 0
    named = [Generation(**{**x.__dict__, "completed": x.sample > 0}) if x.lang == "en" else x for x in gens]
    called = []
    build_pairs(named, vote_all(named, tie_break="critique"), langs=["en", "fr", "de", "zh"],
                translate=lambda *request: called.append(request) or replies["fr"])
    assert {text for text, _, _ in called} == {named[0].text}  # the one whose text names the letter itself
    cued = [Generation(**{**x.__dict__, "completed": True}) if x.lang == "en" else x for x in gens]
    pairs, report = build_pairs(cued, vote_all(cued, tie_break="critique"), langs=["en", "fr", "de", "zh"],
                                translate=lambda text, src, tgt: replies[tgt])
    assert sorted(p.lang for p in pairs) == ["fr", "zh"]  # zh names no letter, as its source; de another
    assert report.per_lang["de"].translation_rejected == 1 and report.per_lang["zh"].translation_rejected == 0
