"""Votes, accuracies and consistency against hand-worked cases."""

from __future__ import annotations

import math

import pytest

from calm_rag.records import Critique, Generation
from calm_rag.vote import (answer_accuracy, consistency, language_answers, majority_vote, question_consistency,
                           sample_accuracy, vote_accuracy, vote_all, vote_stats)


def g(lang, letter, sample=0, qid="q", score=0.0):
    return Generation(question_id=qid, lang=lang, sample=sample, text=f"Answer: {letter}", letter=letter,
                      critique=Critique(score=score))


def test_majority_over_all_languages_and_samples():
    gens = [g("en", "A"), g("en", "B", 1), g("fr", "B"), g("fr", None, 1), g("zh", "B"), g("zh", "A", 1)]
    v = majority_vote(gens)
    assert v.winner == "B" and v.counts == {"A": 2.0, "B": 3.0} and not v.tie and v.n_unparseable == 1


def test_tie_breaks():
    gens = [g("en", "C"), g("fr", "A"), g("zh", "A"), g("de", "C", score=0.9), g("it", None)]
    first = majority_vote(gens)  # the authors' max(count, key=count.get): first letter seen
    assert first.winner == "C" and first.tie
    assert majority_vote([gens[1], gens[0], gens[2], gens[3]]).winner == "A"
    none = majority_vote(gens, tie_break="none")
    assert none.winner is None and none.tie and none.counts == {"C": 2.0, "A": 2.0}
    assert majority_vote(gens, tie_break="critique").winner == "C"  # C: 0.9 vs A: 0.0
    assert majority_vote(list(reversed(gens)), tie_break="critique").winner == "C"


def test_all_unparseable_has_no_winner():
    v = majority_vote([g("en", None), g("fr", None)])
    assert v.winner is None and not v.tie and v.n_unparseable == 2 and v.counts == {}


def test_critique_weighted_vote_clips_negative_scores():
    gens = [g("en", "A", score=0.2), g("fr", "A", score=0.3), g("zh", "B", score=0.9), g("de", "A", score=-5.0)]
    v = majority_vote(gens, weighting="critique", min_weight=0.01)
    assert v.winner == "B"  # B 0.9 beats A 0.2 + 0.3 + 0.01; the count vote would say A
    assert v.counts["A"] == pytest.approx(0.51) and v.counts["B"] == pytest.approx(0.9)
    assert majority_vote(gens).winner == "A"
    # every score clipped: the weighted vote is the count vote
    low = [g("en", "A", score=-1), g("fr", "B", score=-2), g("zh", "B", score=0.0)]
    assert majority_vote(low, weighting="critique").winner == "B"
    with pytest.raises(ValueError, match="min_weight"):
        majority_vote(low, weighting="critique", min_weight=0)


def test_bad_options_and_mixed_questions_raise():
    with pytest.raises(ValueError, match="tie_break"):
        majority_vote([g("en", "A")], tie_break="random")
    with pytest.raises(ValueError, match="vote_all"):
        majority_vote([g("en", "A", qid="1"), g("en", "A", qid="2")])


def test_vote_all_and_stats_count_ties_and_unparseable():
    gens = [g("en", "A", qid="1"), g("fr", "A", qid="1"),
            g("en", "A", qid="2"), g("fr", "B", qid="2"),
            g("en", None, qid="3"), g("fr", None, qid="3")]
    votes = vote_all(gens, tie_break="none")
    st = vote_stats(votes)
    assert (st.n_questions, st.n_winner, st.n_ties, st.n_unbroken_ties, st.n_all_unparseable, st.n_unparseable_samples) \
        == (3, 1, 1, 1, 1, 2)
    assert vote_all(gens, langs=["en"])["2"].winner == "A"
    gold = {"1": "A", "2": "B", "3": "C", "4": None}
    assert vote_accuracy(votes, gold) == pytest.approx(1 / 3)


def test_per_language_accuracy_per_sample_and_majority():
    gens = [g("en", "A", 0), g("en", "A", 1), g("en", "B", 2), g("fr", None, 0), g("fr", "B", 1), g("fr", "B", 2),
            g("en", "C", 0, qid="r"), g("en", "C", 1, qid="r"), g("en", "C", 2, qid="r")]
    gold = {"q": "A", "r": "C"}
    acc = sample_accuracy(gens, gold)
    assert acc["en"] == pytest.approx(5 / 6) and acc["fr"] == pytest.approx(0.0)
    maj = language_answers(gens)
    assert maj == {"q": {"en": "A", "fr": "B"}, "r": {"en": "C"}}
    assert answer_accuracy(maj, gold) == {"en": 1.0, "fr": 0.0}


def test_consistency_hand_worked():
    assert question_consistency(["A", "A", "A"]) == 1.0
    assert question_consistency(["A", "A", "B"]) == pytest.approx(1 / 3)
    assert question_consistency(["A", "B", "C"]) == 0.0
    # unparseable agrees with nothing by default, not even another unparseable one
    assert question_consistency(["A", None, None]) == 0.0
    assert question_consistency(["A", "A", None]) == pytest.approx(1 / 3)
    assert question_consistency(["A", "A", None], unparseable="drop") == 1.0
    assert question_consistency(["A", None], unparseable="drop") is None
    answers = {"1": {"en": "A", "fr": "A", "zh": "A"}, "2": {"en": "A", "fr": "A", "zh": "B"}}
    assert consistency(answers) == pytest.approx((1 + 1 / 3) / 2)
    # a language missing from a question counts as unparseable when langs are given
    assert consistency({"1": {"en": "A", "fr": "A"}}, langs=["en", "fr", "zh"]) == pytest.approx(1 / 3)
    assert math.isnan(consistency({"1": {"en": None}}, unparseable="drop"))


def test_consistency_uses_per_language_majorities():
    gens = [g("en", "A", 0), g("en", "A", 1), g("en", "B", 2),
            g("fr", "A", 0), g("fr", "C", 1), g("fr", "A", 2),
            g("zh", "B", 0), g("zh", "B", 1), g("zh", "A", 2)]
    assert consistency(language_answers(gens)) == pytest.approx(1 / 3)  # A, A, B
