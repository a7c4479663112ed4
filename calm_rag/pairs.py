"""DPO preference pairs from the cross-lingual vote, one language at a time.

In each language, every response whose letter differs from the cross-lingual winner is
*rejected* and paired with one *chosen* response of that language that agrees with the winner
(the agreeing response with the highest critique score; ties go to the earliest sample). This is
the CALM authors' scheme: one chosen x each rejected. Unparseable responses (`letter is None`)
are not rejected by default (`unparseable="skip"`), as in the authors' code, which never saw
them; `"reject"` pairs them too, which also teaches the answer format.

When no response in a language agrees, the chosen text is the generator's own translation of
the best agreeing response from another language (`translate(text, src_lang, tgt_lang)`); with
`translate=None` that language is skipped for the question and counted.

The prompt is the rejected response's prompt (`prompt_for(generation)` or `Generation.prompt`):
it holds the question and retrieved passages. chosen/rejected hold only what the model wrote:
any `<paragraph>...</paragraph>` span is cut out of them.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .records import Generation, PreferencePair, Vote, to_dict, write_jsonl

logger = logging.getLogger(__name__)

Translate = Callable[[str, str, str], str]

_PARAGRAPH = re.compile(r"<paragraph>.*?(?:</paragraph>|\Z)", re.DOTALL)


def strip_passages(text: str) -> str:
    """Cut every `<paragraph>...</paragraph>` span (and an unclosed one up to the end)."""
    text = _PARAGRAPH.sub("", text).replace("</paragraph>", "")
    if "<paragraph>" in text:  # cannot happen after the substitution; guard the invariant
        raise AssertionError("passage tag left in a response")
    return text.strip()


@dataclass
class LangPairStats:
    pairs: int = 0
    questions: int = 0  # questions of this language that produced at least one pair
    from_translation: int = 0  # pairs whose chosen is a translation
    all_agree: int = 0  # questions with no response to reject
    skipped_no_chosen: int = 0  # questions with rejects but no agreeing response and no translator
    unparseable_skipped: int = 0  # unparseable responses left out (unparseable="skip")
    prompt_differs: int = 0  # pairs whose chosen came from a response with another prompt


@dataclass
class PairReport:
    per_lang: dict[str, LangPairStats] = field(default_factory=dict)
    no_winner: int = 0  # questions whose vote had no winner: no pairs

    def total(self) -> int:
        return sum(s.pairs for s in self.per_lang.values())


def _pick_chosen(candidates: Sequence[Generation], lang_order: Sequence[str]) -> Generation:
    rank = {lang: i for i, lang in enumerate(lang_order)}
    return max(candidates, key=lambda g: (g.critique.score, -rank.get(g.lang, len(rank)), -g.sample))


def build_pairs(generations: Iterable[Generation], votes: Mapping[str, Vote], *,
                langs: Sequence[str] | None = None, translate: Translate | None = None,
                prompt_for: Callable[[Generation], str] | None = None,
                unparseable: str = "skip") -> tuple[list[PreferencePair], PairReport]:
    """Preference pairs for every question with a winner, per language; returns (pairs, report).

    `langs` limits the languages that get pairs (and orders the search for a translation
    source); all generations still serve as translation sources.
    """
    if unparseable not in ("skip", "reject"):
        raise ValueError(f"unparseable={unparseable!r}: use 'skip' or 'reject'")
    by_q: dict[str, dict[str, list[Generation]]] = defaultdict(lambda: defaultdict(list))
    for g in generations:
        by_q[g.question_id][g.lang].append(g)
    order = list(langs) if langs is not None else list(dict.fromkeys(
        lang for per in by_q.values() for lang in per))
    report = PairReport(per_lang={lang: LangPairStats() for lang in order})
    prompt = prompt_for or (lambda g: g.prompt)
    pairs: list[PreferencePair] = []
    for qid, per_lang in by_q.items():
        vote = votes.get(qid)
        if vote is None or vote.winner is None:
            report.no_winner += 1
            continue
        winner = vote.winner
        agreeing_anywhere = [g for gs in per_lang.values() for g in gs if g.letter == winner]
        for lang in order:
            gens = per_lang.get(lang, [])
            if not gens:
                continue
            stats = report.per_lang[lang]
            agree = [g for g in gens if g.letter == winner]
            reject = [g for g in gens if g.letter != winner and (g.letter is not None or unparseable == "reject")]
            stats.unparseable_skipped += sum(g.letter is None for g in gens) if unparseable == "skip" else 0
            if not reject:
                stats.all_agree += 1
                continue
            source = "sample"
            if agree:
                best = _pick_chosen(agree, order)
                chosen_text = strip_passages(best.text)
            elif translate is not None and agreeing_anywhere:
                best = _pick_chosen(agreeing_anywhere, order)
                chosen_text = strip_passages(translate(strip_passages(best.text), best.lang, lang))
                source = "translation"
            else:
                stats.skipped_no_chosen += 1
                continue
            stats.questions += 1
            for r in reject:
                p = prompt(r)
                if source == "sample" and prompt(best) != p:
                    stats.prompt_differs += 1
                pairs.append(PreferencePair(prompt=p, chosen=chosen_text, rejected=strip_passages(r.text),
                                            question_id=qid, lang=lang, chosen_source=source))
                stats.pairs += 1
                stats.from_translation += source == "translation"
    for lang, s in report.per_lang.items():
        logger.info("pairs %s: %d pairs from %d questions (%d translated chosen, %d skipped without a chosen)",
                    lang, s.pairs, s.questions, s.from_translation, s.skipped_no_chosen)
    return pairs, report


def write_pairs(path: str | Path, pairs: Iterable[PreferencePair], trl_columns_only: bool = False) -> int:
    """Write pairs as JSONL atomically; `trl_columns_only` keeps just prompt/chosen/rejected."""
    if trl_columns_only:
        rows: Iterable[object] = ({k: v for k, v in to_dict(p).items() if k in ("prompt", "chosen", "rejected")}
                                  for p in pairs)
    else:
        rows = pairs
    return write_jsonl(path, rows)
