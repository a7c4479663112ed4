"""Evaluation reports from `Generation` records: accuracy, cross-lingual vote and consistency.

This is the pure reporting half of evaluation (running a model over questions lives elsewhere).
Every metric comes from `vote.py`, so training-time votes and evaluation-time numbers can never
drift apart. Choices made here:

* Only questions with a gold letter are graded; generations of other questions are left out of
  every metric (counted in `n_ungraded_questions`), so accuracy and consistency describe the same
  question set. `Generation.question_id` is shared by the languages of a parallel question.
* `langs` (default: the languages seen, in first-seen order) fixes the language set; a graded
  question with no generation in one of them counts that language as unparseable for
  consistency, and the cell is counted in `n_missing`.
* Unparseable samples (`letter is None`) are wrong for accuracy and cast no vote.
* `bootstrap_delta` resamples questions, with the same resampled set for both runs (a paired
  bootstrap), and takes the percentile 95% interval of after minus before.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .records import Generation, Question, atomic_file, atomic_write_text
from .vote import (UNPARSEABLE, answer_accuracy, consistency, language_answers, majority_vote,
                   question_consistency, sample_accuracy, vote_accuracy, vote_all, vote_stats)

logger = logging.getLogger(__name__)

REPORT_VERSION = 1
PER_LANG_METRICS = ("accuracy", "majority_accuracy", "parse_rate")
GLOBAL_METRICS = ("vote_accuracy", "consistency")


class EvalError(ValueError):
    """Generations, gold letters or a report file that cannot be evaluated as given."""


@dataclass(frozen=True)
class EvalReport:
    """One run's numbers; fractions in [0, 1], None where a metric is undefined."""

    langs: list[str]
    accuracy: dict[str, float]  # per language: correct samples / samples
    majority_accuracy: dict[str, float]  # per language: its majority-of-N letter correct / questions
    vote_accuracy: float  # cross-lingual majority vote over every sample of `langs`
    consistency: float | None  # mean over questions of agreeing / all language pairs
    parse_rate: dict[str, float]  # per language: samples with a letter / samples
    n_questions: int
    n_samples: int
    n_languages: int
    samples_per_lang: dict[str, int]
    n_missing: int = 0  # (question, language) cells without any generation
    n_ungraded_questions: int = 0  # questions with generations but no gold letter, left out
    n_vote_ties: int = 0
    n_vote_no_winner: int = 0
    settings: dict[str, Any] = field(default_factory=dict)  # unparseable policy, tie_break, weighting
    meta: dict[str, Any] = field(default_factory=dict)  # model, adapter, retrieval mode, index, seed
    version: int = REPORT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def mean_accuracy(self) -> float | None:
        """The unweighted mean of the per-language accuracies (the paper's "avg" column)."""
        values = [self.accuracy[lang] for lang in self.langs if self.accuracy.get(lang) is not None]
        return sum(values) / len(values) if values else None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "report") -> EvalReport:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise EvalError(f"{where}: unknown field(s) {unknown} for EvalReport; expected {sorted(names)}")
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in data
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise EvalError(f"{where}: missing field(s) {missing} for EvalReport")
        if data.get("version", REPORT_VERSION) != REPORT_VERSION:
            raise EvalError(f"{where}: report version {data.get('version')} is not {REPORT_VERSION}; "
                            "re-run the evaluation with this calm-rag")
        return cls(**data)

    def metric(self, name: str) -> float | None:
        """A metric by name: "accuracy:<lang>", "majority_accuracy:<lang>", "parse_rate:<lang>",
        "vote_accuracy" or "consistency" (None when undefined or the language is absent)."""
        kind, lang = _parse_metric(name)
        if lang is None:
            return getattr(self, kind)
        values, group = getattr(self, kind), lang.split("+")
        if len(group) == 1:
            return values.get(lang)
        if any(values.get(x) is None for x in group):
            return None
        weights = [self.samples_per_lang.get(x, 0) for x in group]  # a group "en+zh" pools its samples
        return sum(values[x] * w for x, w in zip(group, weights)) / sum(weights) if sum(weights) else None


def _parse_metric(name: str) -> tuple[str, str | None]:
    kind, sep, lang = name.partition(":")
    if kind in GLOBAL_METRICS and not sep:
        return kind, None
    if kind in PER_LANG_METRICS and lang and ("+" not in lang or kind != "majority_accuracy"):
        return kind, lang
    raise EvalError(f"unknown metric {name!r}: use vote_accuracy, consistency, or "
                    f"{', '.join(k + ':<lang>' for k in PER_LANG_METRICS)} (e.g. accuracy:en; accuracy and "
                    f"parse_rate also pool a group, e.g. accuracy:en+zh)")


def table_metrics(langs: Sequence[str]) -> list[str]:
    """The headline metrics: per-language sample accuracy, vote accuracy, consistency."""
    return [f"accuracy:{lang}" for lang in langs] + list(GLOBAL_METRICS)


def gold_from_questions(questions: Iterable[Question]) -> dict[str, str | None]:
    """question id -> gold letter, checking that the languages of a parallel question agree."""
    gold: dict[str, str | None] = {}
    seen: dict[str, str] = {}
    for q in questions:
        if q.id in gold and gold[q.id] != q.gold:
            raise EvalError(f"question {q.id}: gold letter {gold[q.id]} in {seen[q.id]} but {q.gold} in "
                            f"{q.lang}; drop such questions (qa.align_parallel(...).drop(['gold']))")
        gold.setdefault(q.id, q.gold)
        seen.setdefault(q.id, q.lang)
    return gold


def _jsonable_meta(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """A JSON-safe copy of `meta`; paths become strings, anything else non-JSON is an error."""
    def conv(key: str, value: Any) -> Any:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, Mapping):
            return {str(k): conv(f"{key}.{k}", v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [conv(key, v) for v in value]
        if value is None or isinstance(value, (str, int, float, bool)):
            return value
        raise EvalError(f"meta[{key!r}] is a {type(value).__name__}, which a JSON report cannot hold; "
                        "pass a string, number, bool, list or dict")
    return {str(k): conv(str(k), v) for k, v in (meta or {}).items()}


@dataclass
class _Prepared:
    langs: list[str]
    by_q: dict[str, list[Generation]]  # graded questions only, generations restricted to langs
    n_missing: int
    n_ungraded: int


def _prepare(generations: Iterable[Generation], gold: Mapping[str, str | None],
             langs: Sequence[str] | None) -> _Prepared:
    keys: set[tuple[str, str, int]] = set()
    graded: list[Generation] = []
    ungraded: set[str] = set()
    for g in generations:
        key = (g.question_id, g.lang, g.sample)
        if key in keys:
            raise EvalError(f"duplicate generation for question {g.question_id}, lang {g.lang}, sample {g.sample}; "
                            "deduplicate the generations (a resumed run may have appended twice)")
        keys.add(key)
        if gold.get(g.question_id) is None:
            ungraded.add(g.question_id)
        else:
            graded.append(g)
    seen_langs = list(dict.fromkeys(g.lang for g in graded))
    if langs is None:
        langs = seen_langs
    else:
        langs = list(dict.fromkeys(langs))
        if not langs:
            raise EvalError("langs is empty: pass at least one language code, or None for all")
        absent = [lang for lang in langs if lang not in seen_langs]
        if absent:
            raise EvalError(f"langs {absent} have no generations of graded questions (languages present: "
                            f"{seen_langs}); fix the langs argument or generate those languages")
    by_q: dict[str, list[Generation]] = defaultdict(list)
    for g in graded:
        if g.lang in langs:
            by_q[g.question_id].append(g)
    if not by_q:
        example = next(iter(keys), ("?",))[0]
        raise EvalError(f"no generation has a gold letter (e.g. question id {example!r}; gold ids such as "
                        f"{list(gold)[:3]}): question ids in the generations must match the gold mapping")
    if ungraded:
        logger.warning("evaluate: %d question(s) without a gold letter left out (e.g. %s)",
                       len(ungraded), sorted(ungraded)[0])
    missing = sum(len(set(langs) - {g.lang for g in gs}) for gs in by_q.values())
    dropped = {g.question_id for g in graded} - set(by_q)
    if dropped:
        logger.warning("evaluate: %d graded question(s) have no generation in %s and are left out (e.g. %s)",
                       len(dropped), langs, sorted(dropped)[0])
    if missing:
        logger.warning("evaluate: %d (question, language) cells have no generation; they count as "
                       "unparseable for consistency", missing)
    return _Prepared(list(langs), dict(by_q), missing, len(ungraded))


def _check_settings(unparseable: str, tie_break: str, weighting: str) -> dict[str, Any]:
    if unparseable not in UNPARSEABLE:
        raise EvalError(f"unparseable={unparseable!r}: use one of {', '.join(UNPARSEABLE)}")
    majority_vote([], "", tie_break=tie_break, weighting=weighting)  # validates both names
    return {"unparseable": unparseable, "tie_break": tie_break, "weighting": weighting}


def evaluate_generations(generations: Iterable[Generation], gold: Mapping[str, str | None],
                         langs: Sequence[str] | None = None, meta: Mapping[str, Any] | None = None, *,
                         unparseable: str = "disagree", tie_break: str = "first",
                         weighting: str = "count") -> EvalReport:
    """Score one run's generations against `gold` (question id -> letter)."""
    settings = _check_settings(unparseable, tie_break, weighting)
    prep = _prepare(generations, gold, langs)
    gens = [g for gs in prep.by_q.values() for g in gs]
    graded = {qid: gold[qid] for qid in prep.by_q}
    votes = vote_all(gens, tie_break=tie_break, weighting=weighting)
    answers = language_answers(gens, tie_break=tie_break, weighting=weighting)
    stats = vote_stats(votes)
    per_lang: dict[str, int] = defaultdict(int)
    parsed: dict[str, int] = defaultdict(int)
    for g in gens:
        per_lang[g.lang] += 1
        parsed[g.lang] += g.letter is not None
    cons = consistency(answers, langs=prep.langs, unparseable=unparseable)
    acc, maj = sample_accuracy(gens, graded), answer_accuracy(answers, graded)
    report = EvalReport(
        langs=prep.langs,
        accuracy={lang: acc[lang] for lang in prep.langs},
        majority_accuracy={lang: maj[lang] for lang in prep.langs},
        vote_accuracy=vote_accuracy(votes, graded),
        consistency=None if math.isnan(cons) else cons,
        parse_rate={lang: parsed[lang] / per_lang[lang] for lang in prep.langs},
        n_questions=len(prep.by_q),
        n_samples=len(gens),
        n_languages=len(prep.langs),
        samples_per_lang={lang: per_lang[lang] for lang in prep.langs},
        n_missing=prep.n_missing,
        n_ungraded_questions=prep.n_ungraded,
        n_vote_ties=stats.n_ties,
        n_vote_no_winner=stats.n_questions - stats.n_winner,
        settings=settings,
        meta=_jsonable_meta(meta),
    )
    logger.info("evaluate: %d questions x %d languages: vote accuracy %.3f, consistency %s",
                report.n_questions, report.n_languages, report.vote_accuracy, report.consistency)
    return report


# ---------------------------------------------------------------------------------------------
# paired bootstrap


def _components(prep: _Prepared, gold: Mapping[str, str | None], qids: Sequence[str], metric: str,
                settings: Mapping[str, Any]) -> tuple[list[float], list[float]]:
    """Per question (numerator, denominator) whose ratio of sums is the report's metric."""
    kind, lang = _parse_metric(metric)
    group = lang.split("+") if lang is not None else []
    missing = [x for x in group if x not in prep.langs]
    if missing:
        raise EvalError(f"metric {metric!r}: language {missing[0]} is not among the evaluated {prep.langs}")
    vote_kw = {"tie_break": settings["tie_break"], "weighting": settings["weighting"]}
    nums, dens = [], []
    for qid in qids:
        gs = prep.by_q[qid]
        mine = [g for g in gs if g.lang in group]
        num: float
        if kind == "accuracy":
            num, den = sum(g.letter == gold[qid] for g in mine), len(mine)
        elif kind == "parse_rate":
            num, den = sum(g.letter is not None for g in mine), len(mine)
        elif kind == "majority_accuracy":
            num, den = (majority_vote(mine, qid, **vote_kw).winner == gold[qid], 1) if mine else (0, 0)
        elif kind == "vote_accuracy":
            num, den = majority_vote(gs, qid, **vote_kw).winner == gold[qid], 1
        else:  # consistency
            by_lang = language_answers(gs, **vote_kw)[qid]
            score = question_consistency([by_lang.get(x) for x in prep.langs], settings["unparseable"])
            num, den = (0.0, 0) if score is None else (score, 1)
        nums.append(float(num))
        dens.append(float(den))
    return nums, dens


def bootstrap_deltas(before: Iterable[Generation], after: Iterable[Generation], gold: Mapping[str, str | None],
                     metrics: Sequence[str] | None = None, n_boot: int = 1000, seed: int = 0, *,
                     langs: Sequence[str] | None = None, unparseable: str = "disagree", tie_break: str = "first",
                     weighting: str = "count") -> dict[str, tuple[float, float, float]]:
    """metric -> (after - before, 2.5th, 97.5th percentile) from one paired question bootstrap.

    Both runs must cover the same graded questions and languages; every metric uses the same
    resampled question sets. `metrics` defaults to `table_metrics(langs)`.
    """
    import numpy as np

    if n_boot < 1:
        raise EvalError(f"n_boot must be >= 1, got {n_boot}")
    settings = _check_settings(unparseable, tie_break, weighting)
    pb, pa = _prepare(before, gold, langs), _prepare(after, gold, langs)
    if pb.langs != pa.langs:
        raise EvalError(f"before has languages {pb.langs}, after {pa.langs}: pass langs=[...] to compare "
                        "the same languages")
    if set(pb.by_q) != set(pa.by_q):
        only_b, only_a = sorted(set(pb.by_q) - set(pa.by_q)), sorted(set(pa.by_q) - set(pb.by_q))
        raise EvalError(f"the runs graded different questions ({len(only_b)} only before, e.g. {only_b[:3]}; "
                        f"{len(only_a)} only after, e.g. {only_a[:3]}): evaluate both on the same questions")
    qids = sorted(pb.by_q)
    idx = np.random.default_rng(seed).integers(0, len(qids), size=(n_boot, len(qids)))
    out = {}
    for metric in metrics if metrics is not None else table_metrics(pb.langs):
        nb, db = (np.asarray(x) for x in _components(pb, gold, qids, metric, settings))
        na, da = (np.asarray(x) for x in _components(pa, gold, qids, metric, settings))
        with np.errstate(invalid="ignore", divide="ignore"):
            delta = na.sum() / da.sum() - nb.sum() / db.sum()
            boots = na[idx].sum(1) / da[idx].sum(1) - nb[idx].sum(1) / db[idx].sum(1)
        ok = boots[~np.isnan(boots)]
        if len(ok) < len(boots):
            logger.warning("bootstrap %s: %d of %d resamples had no defined value and were skipped",
                           metric, len(boots) - len(ok), len(boots))
        lo, hi = np.percentile(ok, [2.5, 97.5]) if len(ok) else (math.nan, math.nan)
        out[metric] = (float(delta), float(lo), float(hi))
    return out


def bootstrap_delta(before: Iterable[Generation], after: Iterable[Generation], gold: Mapping[str, str | None],
                    metric: str, n_boot: int = 1000, seed: int = 0, **kwargs: Any) -> tuple[float, float, float]:
    """(after - before, lo, hi): the 95% paired-bootstrap interval of one metric's change."""
    return bootstrap_deltas(before, after, gold, [metric], n_boot, seed, **kwargs)[metric]


# ---------------------------------------------------------------------------------------------
# tables, plots, files


def _label(metric: str) -> str:
    kind, lang = _parse_metric(metric)
    name = {"accuracy": "acc", "majority_accuracy": "maj acc", "parse_rate": "parsed",
            "vote_accuracy": "vote acc", "consistency": "consistency"}[kind]
    return f"{name} {lang}" if lang else name


def _pct(x: float | None) -> str:
    return "–" if x is None or math.isnan(x) else f"{100 * x:.1f}"


def _pp(x: float | None) -> str:
    return "–" if x is None or math.isnan(x) else f"{100 * x:+.1f}"


def _union_langs(reports: Iterable[EvalReport]) -> list[str]:
    return list(dict.fromkeys(lang for r in reports for lang in r.langs))


def markdown_table(reports: Mapping[str, EvalReport], accuracy: str = "accuracy") -> str:
    """Runs as rows; per-language accuracy, vote accuracy and consistency in percent.

    `accuracy="majority_accuracy"` shows each language's majority-of-N accuracy instead.
    """
    if accuracy not in ("accuracy", "majority_accuracy"):
        raise EvalError(f"accuracy={accuracy!r}: use 'accuracy' or 'majority_accuracy'")
    metrics = [f"{accuracy}:{lang}" for lang in _union_langs(reports.values())] + list(GLOBAL_METRICS)
    lines = ["| run | " + " | ".join(_label(m) for m in metrics) + " |",
             "|---|" + "---:|" * len(metrics)]
    for name, r in reports.items():
        lines.append(f"| {name} | " + " | ".join(_pct(r.metric(m)) for m in metrics) + " |")
    return "\n".join(lines) + "\n"


def markdown_delta(before: EvalReport, after: EvalReport,
                   deltas: Mapping[str, tuple[float, float, float]] | None = None) -> str:
    """Metrics as rows: before, after (percent), change and its 95% interval (percentage points).

    Rows are `table_metrics` of both runs' languages plus any other metric in `deltas`; a row
    without a bootstrap result shows the plain difference and no interval.
    """
    deltas = deltas or {}
    metrics = list(dict.fromkeys(table_metrics(_union_langs([before, after])) + list(deltas)))
    lines = ["| metric | before | after | Δ (pp) | 95% CI (pp) |", "|---|---:|---:|---:|---:|"]
    for m in metrics:
        b, a = before.metric(m), after.metric(m)
        if m in deltas:
            d, lo, hi = deltas[m]
            ci = f"[{_pp(lo)}, {_pp(hi)}]"
        else:
            d = a - b if a is not None and b is not None else None
            ci = "–"
        lines.append(f"| {_label(m)} | {_pct(b)} | {_pct(a)} | {_pp(d)} | {ci} |")
    return "\n".join(lines) + "\n"


def plot_reports(reports: Mapping[str, EvalReport], path: str | Path, title: str | None = None) -> Path:
    """A PNG of grouped bars: per-language accuracy, vote accuracy and consistency per run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not reports:
        raise EvalError("plot_reports needs at least one report")
    path = Path(path)
    metrics = table_metrics(_union_langs(reports.values()))
    n_runs = len(reports)
    width = 0.8 / n_runs
    fig = Figure(figsize=(max(6.0, 0.35 * len(metrics) * n_runs + 2.5), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, (name, r) in enumerate(reports.items()):
        xs, ys = [], []
        for j, m in enumerate(metrics):
            v = r.metric(m)
            if v is not None and not math.isnan(v):
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(100 * v)
        bars = ax.bar(xs, ys, width, label=name)
        if len(metrics) * n_runs <= 48:  # beyond that the numbers are unreadable; the table has them
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1, rotation=90 if n_runs > 2 else 0)
    ax.set_xticks(range(len(metrics)), [_label(m) for m in metrics], rotation=30, ha="right")
    ax.axvline(len(metrics) - 2.5, color="0.6", linewidth=0.8, linestyle="--")  # languages | cross-lingual
    ax.set_ylim(0, 120 if n_runs > 2 else 110)
    ax.set_ylabel("%")
    ax.set_title(title or "Accuracy per language, vote accuracy and consistency")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120)
    return path


def save_report(report: EvalReport, path: str | Path) -> None:
    """Write the report as JSON (temp file + rename)."""
    atomic_write_text(path, json.dumps(report.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def load_report(path: str | Path) -> EvalReport:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise EvalError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); re-run the evaluation") from exc
    if not isinstance(data, dict):
        raise EvalError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return EvalReport.from_dict(data, str(path))
