"""Evaluating any QA files (`calm-rag calm eval --data`): a model and an optional adapter on questions in any
supported format, without a run folder; generations in a resumable folder per setting."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from calm_rag.config import ConfigError, RunConfig
from calm_rag.config_files import load_run_config
from calm_rag.pipeline import eval_generate_config, evaluate_modes, split_from_file
from calm_rag.retrieve import load_retriever
from calm_rag.records import Question, atomic_write_text, file_sha256

log = logging.getLogger(__name__)


def load_eval_questions(files: Iterable[str | Path], langs: Iterable[str] | None = None,
                        max_questions: int | None = None, drop_mismatched: bool = True,
                        split: str | Path | None = None):
    """Questions of QA files in any supported format, aligned across languages.

    A file's language comes from its name (`en.json`) or its rows (X-CSR `lang`); a file with
    neither takes the language at its position in `langs` when there is one per file. `langs`
    (default: every language found) selects and orders the languages. Files of one language are
    concatenated, so USMLE and MCMLE can be evaluated together. Languages align by question id
    when their ids overlap (files of one set share `<set>-<part>-<index>` ids), otherwise by
    position, the first language's ids naming the questions. With a `split` file only its dev
    questions are kept (all of them must be in the files).
    """
    from calm_rag.qa import QAFormatError, align_and_report, lang_from_path, load_questions

    files = [Path(f) for f in files]
    if not files:
        raise ConfigError("no QA files given; pass --data FILE... (CALM .json, X-CSR or MedQA .jsonl)")
    if max_questions is not None and max_questions < 1:  # a negative count would slice off the last questions
        raise ConfigError(f"--max-questions {max_questions}: use a positive number of questions, or leave it unset "
                          f"for all")
    langs = list(dict.fromkeys(langs)) if langs else None
    by_lang: dict[str, list[Question]] = {}
    for i, path in enumerate(files):
        lang = lang_from_path(path)
        try:
            qs = load_questions(path, lang=lang)
        except QAFormatError as exc:
            if lang is not None:
                raise
            if not (langs and len(langs) == len(files)):  # rows without a language, name without one
                raise QAFormatError(f"{exc}; name the language in the file name (en.json) or give --langs with "
                                    f"one language per file") from exc
            qs = load_questions(path, lang=langs[i])
        for q in qs:
            by_lang.setdefault(q.lang, []).append(q)
    found = list(by_lang)
    if langs:
        absent = [lang for lang in langs if lang not in by_lang]
        if absent:
            raise ConfigError(f"no questions in language(s) {absent} in {[str(f) for f in files]} (languages "
                              f"found: {found}); fix --langs or add those files")
        by_lang = {lang: by_lang[lang] for lang in langs}
    ref = next(iter(by_lang))
    ref_ids = {q.id for q in by_lang[ref]}
    by = "id" if all(ref_ids & {q.id for q in qs} for qs in by_lang.values()) else "position"
    if by == "position" and len(by_lang) > 1:
        log.warning("the languages share no question ids; aligning them by position (item i is one question)")
    aligned = align_and_report(by_lang, by=by, drop=drop_mismatched)
    keep = list(range(len(aligned)))
    if split is not None:
        _, keep = split_from_file(split, aligned, required=("dev",))
    if max_questions is not None:
        keep = keep[:max_questions]
    if len(keep) < len(aligned):
        remap = {old: new for new, old in enumerate(keep)}
        aligned = type(aligned)(aligned.langs, [aligned.ids[i] for i in keep],
                                {lang: [qs[i] for i in keep] for lang, qs in aligned.by_lang.items()},
                                [dataclasses.replace(m, index=remap[m.index]) for m in aligned.mismatches
                                 if m.index in remap])
    # one id per question in every language (position alignment leaves each language its own ids)
    aligned.by_lang = {lang: [q if q.id == qid else dataclasses.replace(q, id=qid) for q, qid in zip(qs, aligned.ids)]
                       for lang, qs in aligned.by_lang.items()}
    if not aligned.ids:
        raise ConfigError(f"no question is left to evaluate in {[str(f) for f in files]} after alignment "
                          f"(see the warnings)")
    return aligned


def evaluate_files(files: Iterable[str | Path], cfg: RunConfig | None = None, *, langs: Iterable[str] | None = None,
                   adapter: str | None = None, retrieval: Iterable[str] | None = None,
                   max_questions: int | None = None, split: str | Path | None = None,
                   out: str | Path | None = None) -> dict[str, Any]:
    """Evaluate a model (and optional adapter) on any QA files: the run evaluation's table, per mode.

    Model, index, passages, generation and critique settings come from `cfg` (default: the
    bundled ones); `retrieval` (default `cfg.eval.retrieval`) lists the modes to compare, e.g.
    ("never", "always") for zero-shot vs retrieval; `split` keeps only a split file's dev
    questions (see `load_eval_questions`). Generations go to `out`/<mode>.generations.jsonl
    (gold letters to `out`/gold.json, for `report.files_metrics`) and are resumed: a rerun skips
    done units. `out` defaults to runs/eval/<model>-<hash of the settings>, and a folder refuses
    other settings (settings.json), so results never mix.
    Returns {row name: EvalReport}; rows are named like the run's ("base", "calm-never", ...).
    """
    import hashlib

    from calm_rag.evaluate import gold_from_questions, markdown_table

    cfg = cfg or load_run_config(None)
    modes = tuple(dict.fromkeys(retrieval or cfg.eval.retrieval))
    for mode in modes:
        if mode not in ("always", "adaptive", "never"):
            raise ConfigError(f"retrieval mode {mode!r}; use always, adaptive or never")
    files = [Path(f).resolve() for f in files]
    aligned = load_eval_questions(files, langs, max_questions, cfg.data.drop_mismatched, split)
    units = [aligned.by_lang[lang][i] for i in range(len(aligned)) for lang in aligned.langs]
    gold = gold_from_questions(units)
    adapter = adapter or cfg.model.adapter
    index = cfg.selfrag.index
    if index is None and any(m != "never" for m in modes):
        raise ConfigError(f"retrieval {list(modes)} needs an index: pass --index DIR (e.g. indexes/commonsense, "
                          f"indexes/medical) or --retrieval never")
    gen_cfg = eval_generate_config(cfg)
    settings = json.loads(json.dumps({
        "files": {str(f): file_sha256(f) for f in files}, "langs": aligned.langs,
        "units": hashlib.sha256("\n".join(f"{q.id}\t{q.lang}" for q in units).encode()).hexdigest(),
        "model": cfg.model.generator, "adapter": str(Path(adapter).resolve()) if adapter else None,
        "device": cfg.model.device, "backend": cfg.model.backend, "precision": cfg.model.precision,
        "index": str(Path(index).resolve()) if index else None,
        "generate": dataclasses.asdict(gen_cfg),
        "selfrag": {k: v for k, v in dataclasses.asdict(cfg.selfrag).items() if k not in ("retrieval", "index")},
    }))
    if out is None:
        import re

        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
        out = Path("runs") / "eval" / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', Path(cfg.model.generator).name)}-{digest}"
    out = Path(out)
    settings_path = out / "settings.json"
    if settings_path.exists():
        old = json.loads(settings_path.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if changed:
            raise ConfigError(f"{settings_path}: this folder holds an evaluation with other {', '.join(changed)}; "
                              f"use another --out (or leave --out unset for a folder per setting)")
    else:
        atomic_write_text(settings_path, json.dumps(settings, indent=2, ensure_ascii=False) + "\n")
    # the graded questions' gold letters, so the folder's letters can be compared without the data files
    atomic_write_text(out / "gold.json", json.dumps(gold, indent=2, ensure_ascii=False) + "\n")
    retriever = load_retriever(index) if index and any(m != "never" for m in modes) else None
    log.info("evaluating %d question(s) x %d language(s) in %s", len(aligned), len(aligned.langs), out)
    adapter_path = settings["adapter"]
    reports = evaluate_modes(cfg, units, gold, aligned.langs, modes, out, adapter=adapter_path,
                             retriever=(lambda: retriever) if retriever is not None else None,
                             meta={"index": settings["index"], "files": [str(f) for f in files], "out": str(out)})
    atomic_write_text(out / "report.md", markdown_table(reports))
    return reports
