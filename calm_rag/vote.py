"""Cross-lingual voting and consistency metrics: pure functions over `Generation` records.

Choices made here (the defaults follow the CALM authors' released code, utils/votingfunc.py):

* The vote pools every extracted letter of every sample in every language of one question and
  takes the most frequent letter (`weighting="count"`). Unparseable samples (`letter is None`)
  cast no vote; a question whose samples are all unparseable has no winner (`Vote.winner=None`,
  counted by `vote_stats`).
* Ties: `tie_break="first"` (default) is the authors' `max(count, key=count.get)`: the tied
  letter seen first in the pooled order (the order of the generations given) wins, and the vote
  is marked `tie=True`. `"none"` leaves a tie without a winner (their 3-language MedQA vote did
  this); `"critique"` breaks it by the summed critique scores of the tied letters (then "first").
* `weighting="critique"` weighs each sample by `Critique.score` clipped to at least
  `min_weight` (> 0), so negative or zero Self-RAG scores still count a little and never vote
  against a letter; when all scores are clipped this is the count vote.
* Consistency (the paper's): the mean over questions of (agreeing language pairs / all language
  pairs), where a language's answer is its per-language majority letter. With
  `unparseable="disagree"` (default) a language without a letter agrees with nothing, not even
  another unparseable one; `"drop"` removes such languages first and skips questions with fewer
  than two answered languages (the authors' scripts did this).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

from .records import Generation, Vote

WEIGHTINGS = ("count", "critique")
TIE_BREAKS = ("first", "none", "critique")
UNPARSEABLE = ("disagree", "drop")


def _check(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r}: use one of {', '.join(allowed)}")


def _weight(g: Generation, weighting: str, min_weight: float) -> float:
    return 1.0 if weighting == "count" else max(float(g.critique.score), min_weight)


def majority_vote(generations: Iterable[Generation], question_id: str | None = None, *,
                  weighting: str = "count", tie_break: str = "first", min_weight: float = 1e-3) -> Vote:
    """Vote over the letters of all given generations (one question, any number of languages)."""
    _check("weighting", weighting, WEIGHTINGS)
    _check("tie_break", tie_break, TIE_BREAKS)
    if not min_weight > 0:
        raise ValueError(f"min_weight must be > 0 so every answer counts positively, got {min_weight}")
    gens = list(generations)
    if question_id is None:
        ids = {g.question_id for g in gens}
        if len(ids) > 1:
            raise ValueError(f"majority_vote got generations of several questions {sorted(ids)[:3]}; use vote_all")
        question_id = ids.pop() if ids else ""
    counts: dict[str, float] = {}  # insertion order = first-seen order
    scores: dict[str, float] = defaultdict(float)
    unparseable = 0
    for g in gens:
        if g.letter is None:
            unparseable += 1
            continue
        counts[g.letter] = counts.get(g.letter, 0.0) + _weight(g, weighting, min_weight)
        scores[g.letter] += float(g.critique.score)
    if not counts:
        return Vote(question_id, None, {}, tie=False, n_unparseable=unparseable)
    best = max(counts.values())
    tied = [k for k, v in counts.items() if math.isclose(v, best, rel_tol=1e-9, abs_tol=1e-12)]
    winner: str | None = tied[0]
    if len(tied) > 1:
        if tie_break == "none":
            winner = None
        elif tie_break == "critique":
            top = max(scores[k] for k in tied)
            winner = next(k for k in tied if math.isclose(scores[k], top, rel_tol=1e-9, abs_tol=1e-12))
    return Vote(question_id, winner, counts, tie=len(tied) > 1, n_unparseable=unparseable)


def group_by_question(generations: Iterable[Generation]) -> dict[str, list[Generation]]:
    """Generations per question id, keeping their order (which decides "first" tie-breaks)."""
    out: dict[str, list[Generation]] = defaultdict(list)
    for g in generations:
        out[g.question_id].append(g)
    return dict(out)


def vote_all(generations: Iterable[Generation], *, langs: Sequence[str] | None = None, **kwargs) -> dict[str, Vote]:
    """The cross-lingual vote of every question (restricted to `langs` when given)."""
    keep = set(langs) if langs is not None else None
    return {qid: majority_vote([g for g in gens if keep is None or g.lang in keep], qid, **kwargs)
            for qid, gens in group_by_question(generations).items()}


@dataclass(frozen=True)
class VoteStats:
    n_questions: int
    n_winner: int
    n_ties: int  # votes with a tie (broken or not)
    n_unbroken_ties: int  # ties left without a winner
    n_all_unparseable: int  # no sample of the question had a letter
    n_unparseable_samples: int


def vote_stats(votes: Mapping[str, Vote]) -> VoteStats:
    vs = list(votes.values())
    return VoteStats(
        n_questions=len(vs),
        n_winner=sum(v.winner is not None for v in vs),
        n_ties=sum(v.tie for v in vs),
        n_unbroken_ties=sum(v.tie and v.winner is None for v in vs),
        n_all_unparseable=sum(not v.counts for v in vs),
        n_unparseable_samples=sum(v.n_unparseable for v in vs),
    )


def language_answers(generations: Iterable[Generation], *, tie_break: str = "first",
                     weighting: str = "count", min_weight: float = 1e-3) -> dict[str, dict[str, str | None]]:
    """question id -> lang -> that language's own majority letter (None: no letter or unbroken tie)."""
    per: dict[str, dict[str, list[Generation]]] = defaultdict(lambda: defaultdict(list))
    for g in generations:
        per[g.question_id][g.lang].append(g)
    return {qid: {lang: majority_vote(gs, qid, weighting=weighting, tie_break=tie_break,
                                      min_weight=min_weight).winner
                  for lang, gs in by_lang.items()}
            for qid, by_lang in per.items()}


def _gold_ids(gold: Mapping[str, str | None]) -> list[str]:
    return [qid for qid, letter in gold.items() if letter is not None]


def sample_accuracy(generations: Iterable[Generation], gold: Mapping[str, str | None]) -> dict[str, float]:
    """Per language: correct samples / all samples of questions with a gold letter (unparseable = wrong)."""
    right: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    for g in generations:
        if gold.get(g.question_id) is None:
            continue
        total[g.lang] += 1
        right[g.lang] += g.letter == gold[g.question_id]
    return {lang: right[lang] / total[lang] for lang in total}


def answer_accuracy(answers: Mapping[str, Mapping[str, str | None]], gold: Mapping[str, str | None]) -> dict[str, float]:
    """Per language accuracy of one answer per question (e.g. `language_answers`); None = wrong.

    The denominator is the questions with a gold letter that have generations in that language.
    """
    right: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    for qid in _gold_ids(gold):
        for lang, letter in answers.get(qid, {}).items():
            total[lang] += 1
            right[lang] += letter == gold[qid]
    return {lang: right[lang] / total[lang] for lang in total}


def vote_accuracy(votes: Mapping[str, Vote], gold: Mapping[str, str | None]) -> float:
    """Cross-lingual majority-vote accuracy over questions with a gold letter; no winner = wrong."""
    ids = [qid for qid in _gold_ids(gold) if qid in votes]
    if not ids:
        return float("nan")
    return sum(votes[qid].winner == gold[qid] for qid in ids) / len(ids)


def question_consistency(letters: Sequence[str | None], unparseable: str = "disagree") -> float | None:
    """Agreeing pairs / all pairs for one question's per-language letters; None if undefined."""
    _check("unparseable", unparseable, UNPARSEABLE)
    if unparseable == "drop":
        letters = [x for x in letters if x is not None]
    if len(letters) < 2:
        return None
    pairs = list(combinations(letters, 2))
    return sum(a is not None and a == b for a, b in pairs) / len(pairs)


def consistency(answers: Mapping[str, Mapping[str, str | None]], langs: Sequence[str] | None = None,
                unparseable: str = "disagree") -> float:
    """The paper's cross-lingual consistency: mean over questions of agreeing / all language pairs.

    `answers` is question id -> lang -> letter (see `language_answers`). With `langs`, only those
    languages count and a missing one is unparseable; questions where the score is undefined
    (fewer than two languages) are skipped.
    """
    scores = []
    for by_lang in answers.values():
        letters = [by_lang.get(lang) for lang in langs] if langs is not None else list(by_lang.values())
        s = question_consistency(letters, unparseable)
        if s is not None:
            scores.append(s)
    return sum(scores) / len(scores) if scores else float("nan")


# ---------------------------------------------------------------- the training signal, before DPO

SHARE_BINS = 10  # winner-share histogram bins of width 0.1; the last one includes 1.0


def winner_share(vote: Vote) -> float | None:
    """The winning letter's share of the votes cast (weights under weighting="critique"); None without a winner."""
    total = sum(vote.counts.values())
    if vote.winner is None or total <= 0:
        return None
    return vote.counts.get(vote.winner, 0.0) / total


def _share_bin(share: float) -> str:
    k = min(int(share * SHARE_BINS + 1e-9), SHARE_BINS - 1)
    return f"{k / SHARE_BINS:.1f}-{(k + 1) / SHARE_BINS:.1f}"


def training_signal(generations: Iterable[Generation], votes: Mapping[str, Vote], gold: Mapping[str, str | None],
                    n_options: Mapping[str, int] | None = None, min_agreement: float | None = None) -> dict:
    """How good the vote is as a DPO target, on the questions with a gold letter (JSON-ready).

    vote_accuracy (no winner = wrong) against `chance` (mean of 1 / options over those questions,
    from `n_options`), per-language sample accuracy, and the distribution of the winner's vote
    share (`winner_share`) in bins of 0.1, each bin with its questions and how many of those with
    gold the vote got right, so a `min_agreement` can be chosen from it; with `min_agreement`,
    the same accuracy on the questions it keeps.
    """
    gens = list(generations)
    with_gold = {qid for qid in votes if gold.get(qid) is not None}
    right = {qid for qid in with_gold if votes[qid].winner == gold[qid]}
    sizes = [n_options[qid] for qid in with_gold if n_options and n_options.get(qid)]
    shares = {qid: winner_share(v) for qid, v in votes.items()}
    bins = {_share_bin((k + 0.5) / SHARE_BINS): {"questions": 0, "with_gold": 0, "right": 0}
            for k in range(SHARE_BINS)}
    for qid, share in shares.items():
        if share is None:
            continue
        b = bins[_share_bin(share)]
        b["questions"] += 1
        b["with_gold"] += qid in with_gold
        b["right"] += qid in right
    known = sorted(s for s in shares.values() if s is not None)
    out = {
        "questions": len(votes),
        "with_gold": len(with_gold),
        "vote_right": len(right),
        "vote_accuracy": len(right) / len(with_gold) if with_gold else None,
        "chance": sum(1 / n for n in sizes) / len(sizes) if sizes else None,
        "sample_accuracy": sample_accuracy((g for g in gens if g.question_id in votes), gold),
        "no_winner": sum(s is None for s in shares.values()),
        "winner_share": {"mean": sum(known) / len(known) if known else None,
                         "median": known[len(known) // 2] if known else None,
                         "min": known[0] if known else None, "bins": bins},
    }
    if min_agreement is not None:
        kept = {qid for qid, s in shares.items() if s is not None and s >= min_agreement}
        kept_gold, kept_right = kept & with_gold, kept & right
        out["min_agreement"] = {"threshold": min_agreement, "questions": len(kept), "with_gold": len(kept_gold),
                                "vote_right": len(kept_right),
                                "vote_accuracy": len(kept_right) / len(kept_gold) if kept_gold else None}
    return out


def weak_signal(signal: Mapping) -> bool:
    """The vote is right no more often than chance on the questions with gold (or it is never right)."""
    acc, chance = signal.get("vote_accuracy"), signal.get("chance")
    return acc is not None and (acc <= chance if chance is not None else acc == 0)
