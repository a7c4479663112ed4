"""DPO preference pairs from the cross-lingual vote, one language at a time.

In each language, every response whose letter differs from the cross-lingual winner is
*rejected* and paired with one *chosen* response of that language that agrees with the winner
(the agreeing response with the highest critique score; ties go to the earliest sample). This is
the CALM authors' scheme: one chosen x each rejected. Unparseable responses (`letter is None`)
are not rejected by default (`unparseable="skip"`), as in the authors' code, which never saw
them; `"reject"` pairs them too, which also teaches the answer format.

When no response in a language agrees, the chosen text is the generator's own translation of
the best agreeing response from another language (`translate(text, src_lang, tgt_lang)`), marked
`chosen_source="translation"` and counted (`PairReport.translated_share`); with `translate=None`
that language is skipped for the question and counted. A response whose own text names the winning
letter is preferred as the source, and its translation must name that letter too
(`selfrag.extract_choice`); a source whose letter came from the answer-cue step names none, so its
translation may name none; a translation naming another letter is always dropped. Dropped ones are
counted (`translation_rejected`): a small generator asked to translate may answer with a bare
letter, often another one, and DPO would learn to do that.

On-policy: chosen and rejected are the `Generation.text` of sampled responses byte for byte, the
raw completions the model wrote for their prompts (never re-rendered, stripped or rewritten; a
marked translation is the one exception). The prompt is the rejected response's prompt
(`prompt_for(generation)` or `Generation.prompt`): it holds the question and retrieved passages.
The chosen response is taken among the agreeing ones with that same prompt when there is one;
otherwise from another prompt of the question (another passage), counted in `prompt_differs`.

`min_agreement` (default None, the paper: every question with a winner) keeps only questions
whose winner holds at least that share of the votes cast (`vote.winner_share`; weights under the
critique-weighted vote); the others are counted in `PairReport.below_agreement`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .records import Generation, PreferencePair, Vote, to_dict, write_jsonl
from .selfrag import extract_choice
from .vote import winner_share

logger = logging.getLogger(__name__)

Translate = Callable[[str, str, str], str]


@dataclass
class LangPairStats:
    pairs: int = 0
    questions: int = 0  # questions of this language that produced at least one pair
    from_translation: int = 0  # pairs whose chosen is a translation
    all_agree: int = 0  # questions with no response to reject
    skipped_no_chosen: int = 0  # questions with rejects but no agreeing response and no usable translation
    translation_rejected: int = 0  # translations dropped: they do not name the winning letter
    unparseable_skipped: int = 0  # unparseable responses left out (unparseable="skip")
    prompt_differs: int = 0  # pairs whose chosen came from a response with another prompt
    blank_skipped: int = 0  # responses left out because the model wrote nothing (only whitespace)


@dataclass
class PairReport:
    per_lang: dict[str, LangPairStats] = field(default_factory=dict)
    no_winner: int = 0  # questions whose vote had no winner: no pairs
    below_agreement: int = 0  # questions left out by min_agreement
    kept: int = 0  # questions with a winner that passed min_agreement

    def total(self) -> int:
        return sum(s.pairs for s in self.per_lang.values())

    def translated(self) -> int:
        return sum(s.from_translation for s in self.per_lang.values())

    def translated_share(self) -> float:
        """Share of all pairs whose chosen is a translation (0.0 without pairs)."""
        return self.translated() / self.total() if self.total() else 0.0


def _keeps_letter(translated: str, lang: str, winner: str, source: Generation) -> bool:
    """A usable translation: not blank and naming the winner, or, from a source whose letter came from the
    answer-cue step (its text names none), naming none."""
    named = extract_choice(translated, lang)
    return bool(translated.strip()) and (named == winner or (source.completed and named is None))


def _pick_chosen(candidates: Sequence[Generation], lang_order: Sequence[str]) -> Generation:
    rank = {lang: i for i, lang in enumerate(lang_order)}
    return max(candidates, key=lambda g: (g.critique.score, -rank.get(g.lang, len(rank)), -g.sample))


def build_pairs(generations: Iterable[Generation], votes: Mapping[str, Vote], *,
                langs: Sequence[str] | None = None, translate: Translate | None = None,
                prompt_for: Callable[[Generation], str] | None = None,
                unparseable: str = "skip", min_agreement: float | None = None
                ) -> tuple[list[PreferencePair], PairReport]:
    """Preference pairs for every question with a winner, per language; returns (pairs, report).

    `langs` limits the languages that get pairs (and orders the search for a translation
    source); all generations still serve as translation sources.
    """
    if unparseable not in ("skip", "reject"):
        raise ValueError(f"unparseable={unparseable!r}: use 'skip' or 'reject'")
    if min_agreement is not None and not 0 <= min_agreement <= 1:
        raise ValueError(f"pairs.min_agreement={min_agreement}: use a share of the votes in [0, 1], or None "
                         f"for every question with a winner")
    by_q: dict[str, dict[str, list[Generation]]] = defaultdict(lambda: defaultdict(list))
    for g in generations:
        by_q[g.question_id][g.lang].append(g)
    order = list(langs) if langs is not None else list(dict.fromkeys(
        lang for per in by_q.values() for lang in per))
    report = PairReport(per_lang={lang: LangPairStats() for lang in order})
    prompt = prompt_for or (lambda g: g.prompt)
    pairs: list[PreferencePair] = []
    plans: list[tuple[str, str, str, list[Generation], list[Generation], Generation | None]] = []
    for qid, per_lang in by_q.items():
        vote = votes.get(qid)
        if vote is None or vote.winner is None:
            report.no_winner += 1
            continue
        if min_agreement is not None and (winner_share(vote) or 0.0) < min_agreement:
            report.below_agreement += 1
            continue
        report.kept += 1
        winner = vote.winner
        agreeing_anywhere = [g for gs in per_lang.values() for g in gs if g.letter == winner and g.text.strip()]
        # a source that names the winner in its own words first: its translation can be checked for it
        named = [g for g in agreeing_anywhere if not g.completed] or agreeing_anywhere
        for lang in order:
            gens = per_lang.get(lang, [])
            if not gens:
                continue
            stats = report.per_lang[lang]
            blank = [g for g in gens if not g.text.strip()]  # an empty completion cannot be a DPO answer
            stats.blank_skipped += len(blank)
            gens = [g for g in gens if g.text.strip()]
            agree = [g for g in gens if g.letter == winner]
            reject = [g for g in gens if g.letter != winner and (g.letter is not None or unparseable == "reject")]
            stats.unparseable_skipped += sum(g.letter is None for g in gens) if unparseable == "skip" else 0
            if not reject:
                stats.all_agree += 1
            elif agree:
                plans.append((qid, lang, winner, agree, reject, None))
            elif translate is not None and agreeing_anywhere:
                plans.append((qid, lang, winner, agree, reject, _pick_chosen(named, order)))  # to translate
            else:
                stats.skipped_no_chosen += 1
    # every translation the pairs need, in one batch
    translations = iter(translate_all(translate, [(src.text, src.lang, lang) for _, lang, _, _, _, src in plans
                                                  if src is not None]))
    for qid, lang, winner, agree, reject, source_of_translation in plans:
        stats = report.per_lang[lang]
        translated = next(translations) if source_of_translation is not None else None
        if translated is not None and not _keeps_letter(translated, lang, winner, source_of_translation):
            stats.translation_rejected += bool(translated.strip())
            stats.skipped_no_chosen += 1
            continue
        source = "sample" if translated is None else "translation"
        stats.questions += 1
        for r in reject:
            p = prompt(r)
            if translated is None:
                same = [g for g in agree if prompt(g) == p]
                best = _pick_chosen(same or agree, order)
                stats.prompt_differs += not same
                chosen_text = best.text
            else:
                chosen_text = translated
            pairs.append(PreferencePair(prompt=p, chosen=chosen_text, rejected=r.text,
                                        question_id=qid, lang=lang, chosen_source=source))
            stats.pairs += 1
            stats.from_translation += source == "translation"
    for lang, s in report.per_lang.items():
        logger.info("pairs %s: %d pairs from %d questions (%d translated chosen, %d skipped without a chosen, "
                    "%d translations dropped for not naming the winner)",
                    lang, s.pairs, s.questions, s.from_translation, s.skipped_no_chosen, s.translation_rejected)
    return pairs, report


def translate_all(translate: Translate | None, requests: list[tuple[str, str, str]]) -> list[str]:
    """(text, src, tgt) requests translated: in one batch by a translator with `many`, else one by one."""
    if not requests:
        return []
    many = getattr(translate, "many", None)
    return list(many(requests)) if many is not None else [translate(*r) for r in requests]


def write_pairs(path: str | Path, pairs: Iterable[PreferencePair], trl_columns_only: bool = False) -> int:
    """Write pairs as JSONL atomically; `trl_columns_only` keeps just prompt/chosen/rejected."""
    if trl_columns_only:
        rows: Iterable[object] = ({k: v for k, v in to_dict(p).items() if k in ("prompt", "chosen", "rejected")}
                                  for p in pairs)
    else:
        rows = pairs
    return write_jsonl(path, rows)
