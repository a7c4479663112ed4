"""Votes, accuracies and consistency against hand-worked cases."""

from __future__ import annotations

import math

import pytest

from calm_rag.records import Critique, Generation
from calm_rag.vote import (answer_accuracy, consistency, language_answers, majority_vote, question_consistency,
                           sample_accuracy, training_signal, vote_accuracy, vote_all, vote_stats, weak_signal,
                           winner_share)


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


def test_winner_share_counts_and_weights():
    gens = [g("en", "A"), g("en", "B", 1), g("fr", "B"), g("fr", None, 1), g("zh", "B", score=2.0), g("zh", "A", 1)]
    assert winner_share(majority_vote(gens)) == pytest.approx(3 / 5)  # unparseable samples cast no vote
    weighted = majority_vote(gens, weighting="critique")  # A: 2e-3, B: 2e-3 + 2.0
    assert winner_share(weighted) == pytest.approx((2.0 + 2e-3) / (2.0 + 4e-3))
    assert winner_share(majority_vote([g("en", None)])) is None


def test_training_signal_hand_worked():
    gens = [g("en", "A", 0, "q1"), g("fr", "A", 0, "q1"), g("zh", "B", 0, "q1"),  # A wins 2/3, gold A
            g("en", "C", 0, "q2"), g("fr", "C", 0, "q2"), g("zh", "C", 0, "q2"),  # C wins 3/3, gold D
            g("en", "B", 0, "q3"), g("fr", "A", 0, "q3"),  # tie, A or B; no gold
            g("en", None, 0, "q4")]  # no winner, gold A
    votes = vote_all(gens)
    gold = {"q1": "A", "q2": "D", "q3": None, "q4": "A"}
    sig = training_signal(gens, votes, gold, {"q1": 4, "q2": 4, "q3": 5, "q4": 5}, min_agreement=0.6)
    assert (sig["questions"], sig["with_gold"], sig["vote_right"], sig["no_winner"]) == (4, 3, 1, 1)
    assert sig["vote_accuracy"] == pytest.approx(1 / 3) and sig["chance"] == pytest.approx((0.25 + 0.25 + 0.2) / 3)
    assert sig["sample_accuracy"] == {"en": pytest.approx(1 / 3), "fr": pytest.approx(1 / 2), "zh": 0.0}
    bins = sig["winner_share"]["bins"]
    assert len(bins) == 10 and bins["0.5-0.6"] == {"questions": 1, "with_gold": 0, "right": 0}
    assert bins["0.6-0.7"] == {"questions": 1, "with_gold": 1, "right": 1}
    assert bins["0.9-1.0"] == {"questions": 1, "with_gold": 1, "right": 0}
    assert sig["winner_share"]["min"] == pytest.approx(0.5) and sig["winner_share"]["mean"] == pytest.approx(
        (2 / 3 + 1 + 0.5) / 3)
    assert sig["min_agreement"] == {"threshold": 0.6, "questions": 2, "with_gold": 2, "vote_right": 1,
                                    "vote_accuracy": 0.5}
    assert not weak_signal(sig)  # 1/3 right > 0.233 chance
    assert weak_signal({**sig, "vote_accuracy": 0.2}) and weak_signal({"vote_accuracy": 0.0, "chance": None})
    assert not weak_signal({"vote_accuracy": None, "chance": 0.25})  # no gold: nothing to warn about
