"""The sampling stage: every (question, language) unit answered n times, resumably, with seeds that depend on
the unit only.

What one answer is (retrieval, one generation per passage, critique) is the Self-RAG pass in `rag.py`;
how tokens are drawn is the engine's (`generate.py` and its backends). This module owns the unit loop
the CALM run (`calm sample`), every evaluation and the scripts share: fixed batches, records appended
per batch, a torn batch dropped on restart, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from pathlib import Path

from calm_rag.records import Generation, JsonlAppender, Question, read_jsonl, write_jsonl

log = logging.getLogger(__name__)


def unit_seed(base: int, *parts: str) -> int:
    """A stable per-unit seed (question id, language), independent of run order."""
    return (base * 1_000_003 + zlib.crc32("\x1f".join(parts).encode())) % (2**31)


def sample_units(rag, units: list[Question], out_path: Path, n: int,
                 on_unit: Callable[[int], None] | None = None) -> list[Generation]:
    """Answer every (question, language) unit n times, appending records; done units are skipped.

    Units are answered in groups of `generate.units_per_batch` consecutive units, cut from the full
    unit list (not from what is left), so a group is the same batch with the same seed in every
    run. A group's records are appended at its end; a group cut short by an interrupt leaves some
    units incomplete, and all of that group's records are dropped on restart, so a resumed run
    equals an uninterrupted one.
    """
    from tqdm.auto import tqdm

    size = rag.gen_cfg.units_per_batch
    groups = [units[i:i + size] for i in range(0, len(units), size)]
    done: dict[tuple[str, str], list[dict]] = {}
    if out_path.exists():
        for rec in read_jsonl(out_path):
            done.setdefault((rec["question_id"], rec["lang"]), []).append(rec)
        torn = {(q.id, q.lang) for g in groups if any(len(done.get((q.id, q.lang), [])) != n for q in g)
                for q in g} & set(done)
        if torn:  # records of units outside this unit list are left alone
            log.warning("%s: dropping %d unit(s) of a batch left incomplete by an interrupted run", out_path, len(torn))
            write_jsonl(out_path, [r for key, recs in done.items() if key not in torn for r in recs])
        done = {k: v for k, v in done.items() if k not in torn}
    todo = [g for g in groups if any((q.id, q.lang) not in done for q in g)]
    left = sum(map(len, todo))
    log.info("sampling: %d unit(s) done, %d to go in %d batch(es)", len(units) - left, left, len(todo))
    with JsonlAppender(out_path) as app, tqdm(total=left, desc="sampling", unit="unit", disable=not todo) as bar:
        finished = 0
        for group in todo:
            for answer in rag.answer_many(group, n=n):
                for g in answer.generations():
                    app.append(g)
            bar.update(len(group))
            if on_unit:
                for _ in group:
                    on_unit(finished)
                    finished += 1
    return list(read_jsonl(out_path, Generation))
