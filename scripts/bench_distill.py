"""Measure a distilled Self-RAG model (native reflection tokens) against its verbalised teacher.

On the held-out questions of a distillation config (the first `holdout` positions, every
language), both answer with the same retrieved passages (retrieval forced, so the passages are
identical) and we report:
- well-formed: share of the student's raw outputs (greedy, one per passage) that parse as
  `[Relevant|Irrelevant]answer[support][Utility:k]` (selfrag.parse_output), with no paragraph of
  its own and a non-empty answer;
- critique agreement per passage: the teacher's labels (argmax of the verbalised critic's
  probabilities, as in the training data) vs the tokens the student wrote; retrieval agreement
  compares the argmax of both models' retrieval decisions; rates and confusion tables;
- accuracy per language, teacher (verbalised) vs student (native), the letter SelfRag votes;
- seconds per question for retrieval decision + answer (native vs verbalised, same passages).
  `--samples 3` times what CALM sampling does instead (3 samples per passage at `--temperature`):
  the verbalised critic then scores support and utility for every sample, native critique is read
  off the sampled tokens; accuracy is then the share of right sampled letters.
Prints a markdown table; --json also writes every per-passage record.

    python scripts/bench_distill.py configs/distill.yaml --questions 2
    python scripts/bench_distill.py configs/distill-xcsqa.yaml --questions 50 --json runs/bench_distill.json
    python scripts/bench_distill.py configs/distill-xcsqa-cpu.yaml --questions 5 --samples 3
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import Counter
from pathlib import Path

from calm_rag import selfrag
from calm_rag.config_files import load_distill_config
from calm_rag.distill import LABEL_GROUPS, argmax_token, critic_tables, hard_labels, holdout_units, make_teacher

log = logging.getLogger("bench_distill")


def well_formed(raw: str) -> tuple[bool, selfrag.ParsedOutput]:
    parsed = selfrag.parse_output(raw)
    ok = (parsed.relevance is not None and parsed.support is not None and parsed.utility is not None
          and bool(parsed.answer) and not parsed.paragraphs and raw.lstrip().startswith(parsed.relevance))
    return ok, parsed


def _retrieval(p: float | None) -> str | None:
    """The retrieval token a decision's probability stands for (argmax, as in the training labels)."""
    table = {} if p is None else {selfrag.RETRIEVAL: p, selfrag.NO_RETRIEVAL: 1 - p}
    return argmax_token(table, LABEL_GROUPS["retrieval"])


def run(args) -> dict:
    from calm_rag.config import GenerateConfig, SelfRagConfig
    from calm_rag.generate import load_generator
    from calm_rag.retrieve import load_retriever
    from calm_rag.rag import SelfRag

    cfg = load_distill_config(args.config, device=args.device)
    student_dir = Path(args.student or Path(cfg.out) / "model")
    if not student_dir.is_dir():
        raise SystemExit(f"{student_dir}: no distilled model; run calm-rag selfrag distill {args.config} first")
    units = holdout_units(cfg, limit=args.questions)
    if not units:
        raise SystemExit(f"{args.config}: holdout is 0; there are no held-out questions to measure on")
    retriever = load_retriever(cfg.index, cfg.embedder)
    teacher = make_teacher(cfg, retriever=retriever)
    gcfg = GenerateConfig(n=1, temperature=0.0, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    student = SelfRag(load_generator(str(student_dir), device=cfg.device), retriever,
                      SelfRagConfig(retrieval="adaptive", threshold=0.5, top_k=cfg.top_k, critique="native"), gcfg)
    if args.samples > 1:  # the timed answers sample as CALM does; labels and well-formedness stay greedy
        timed = GenerateConfig(n=args.samples, temperature=args.temperature, max_new_tokens=cfg.max_new_tokens,
                               seed=cfg.seed)
        teacher, student = (SelfRag(m.gen, m.retriever, m.cfg, timed) for m in (teacher, student))
    log.info("%d held-out units; teacher %s (%s), student %s (%s)", len(units), cfg.model, teacher.mode,
             student_dir, student.mode)

    questions, passages = [], []
    for n, (pos, q) in enumerate(units):
        hits = retriever.search([selfrag.question_text(q)], k=cfg.top_k)[0]
        t0 = time.perf_counter()
        _, p_t = teacher.retrieval_decision([q])[0]
        ans_t = teacher.answer(q, n=args.samples, hits=hits, decision=(True, p_t))
        sec_t = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, p_s = student.retrieval_decision([q])[0]
        ans_s = student.answer(q, n=args.samples, hits=hits, decision=(True, p_s))
        sec_s = time.perf_counter() - t0
        questions.append({"position": pos, "id": q.id, "lang": q.lang, "gold": q.gold,
                          "letters_verbalised": ans_t.letters, "letters_native": ans_s.letters,
                          "sec_verbalised": sec_t, "sec_native": sec_s,
                          "retrieval_teacher": _retrieval(p_t), "retrieval_student": _retrieval(p_s),
                          "p_retrieve_teacher": p_t, "p_retrieve_student": p_s})
        if args.samples == 1:  # untimed: the teacher's labels of its greedy answer, the student's greedy tokens
            passages += _passage_records(q, hits, critic_tables(teacher, q, ans_t.samples[0]), student, gcfg)
        log.info("%d/%d %s/%s: verbalised %s (%.1fs), native %s (%.1fs), gold %s", n + 1, len(units), q.id, q.lang,
                 ans_t.letters, sec_t, ans_s.letters, sec_s, q.gold)
    return {"config": str(args.config), "teacher": cfg.model, "student": str(student_dir), "samples": args.samples,
            "temperature": args.temperature if args.samples > 1 else 0.0,
            "questions": questions, "passages": passages}


def _passage_records(q, hits, tables, student, gcfg) -> list[dict]:
    """Per passage: the student's greedy raw output, whether it is well-formed, and both sides' labels."""
    instruction = selfrag.question_instruction(q)
    raws = student.gen.generate([student.prompt(instruction, h) for h in hits], gcfg, n=1)
    records = []
    for hit, table, raw in zip(hits, tables, (r[0] for r in raws)):
        ok, parsed = well_formed(raw)
        teach = hard_labels(table, retrieved=True)
        records.append({"id": q.id, "lang": q.lang, "passage": hit.passage.id, "raw": raw, "well_formed": ok,
                        "teacher": {k: teach[k] for k in ("relevance", "support", "utility")},
                        "student": {"relevance": parsed.relevance, "support": parsed.support,
                                    "utility": None if parsed.utility is None
                                    else selfrag.UTILITY_TOKENS[parsed.utility - 1]}})
    return records


def _pct(num: float, den: float) -> str:
    return f"{100 * num / den:.1f}" if den else "-"


def _right(q: dict, side: str) -> float:
    """Share of a unit's answers (one per sample) that are right."""
    letters = q[f"letters_{side}"]
    return sum(letter == q["gold"] for letter in letters) / len(letters)


def markdown(result: dict) -> str:
    qs, ps = result["questions"], result["passages"]
    langs = list(dict.fromkeys(q["lang"] for q in qs))
    samples = result.get("samples", 1)
    timed = "greedy, one answer per passage" if samples == 1 else \
        f"{samples} samples per passage at temperature {result['temperature']}, accuracy over all samples"
    lines = [f"Held-out questions: {len(qs)} units ({', '.join(langs)}); teacher `{result['teacher']}` "
             f"(verbalised critic), student `{result['student']}` (native tokens); same passages for both; "
             f"timed answers: {timed}.", "",
             "| lang | units | acc verbalised | acc native | s/q verbalised | s/q native | native speed-up "
             "| well-formed native |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for lang in langs + ["all"]:
        sub = [q for q in qs if lang in ("all", q["lang"])]
        psub = [p for p in ps if lang in ("all", p["lang"])]
        acc_v = sum(_right(q, "verbalised") for q in sub)
        acc_n = sum(_right(q, "native") for q in sub)
        sv = sum(q["sec_verbalised"] for q in sub) / len(sub)
        sn = sum(q["sec_native"] for q in sub) / len(sub)
        formed = _pct(sum(p["well_formed"] for p in psub), len(psub))
        lines.append(f"| {lang} | {len(sub)} | {_pct(acc_v, len(sub))} | {_pct(acc_n, len(sub))} | {sv:.2f} | "
                     f"{sn:.2f} | {sv / sn if sn else 0:.2f}x | {formed} |")
    if not ps:  # sampled timing: labels and well-formedness are measured greedily (--samples 1)
        return "\n".join(lines)
    lines += ["", "Critique agreement (teacher: argmax of the verbalised critic; student: the token it wrote; "
              "retrieval per question, the rest per passage):", "",
              "| group | n | agreement % | teacher rate % | student rate % | student missing % |",
              "|---|---:|---:|---:|---:|---:|"]
    pairs = {"retrieval": [(q["retrieval_teacher"], q["retrieval_student"]) for q in qs]}
    for group in ("relevance", "support", "utility"):
        pairs[group] = [(p["teacher"][group], p["student"][group]) for p in ps]
    positive = {"retrieval": selfrag.RETRIEVAL, "relevance": selfrag.RELEVANT, "support": selfrag.FULLY_SUPPORTED,
                "utility": selfrag.UTILITY_TOKENS[-1]}
    for group, rows in pairs.items():
        n = len(rows)
        agree = sum(t == s for t, s in rows)
        teacher_rate = _pct(sum(t == positive[group] for t, _ in rows), n)
        student_rate = _pct(sum(s == positive[group] for _, s in rows), n)
        missing = _pct(sum(s is None for _, s in rows), n)
        lines.append(f"| {group} ({positive[group]}) | {n} | {_pct(agree, n)} | {teacher_rate} | {student_rate} "
                     f"| {missing} |")
    for group, rows in pairs.items():
        tokens = list(LABEL_GROUPS[group]) + [None]
        counts = Counter(rows)
        lines += ["", f"Confusion, {group} (rows: teacher, columns: student):", "",
                  "| teacher \\ student | " + " | ".join(t or "missing" for t in tokens) + " |",
                  "|---|" + "---:|" * len(tokens)]
        for t in tokens:
            if any(counts[(t, s)] for s in tokens):
                lines.append(f"| {t or 'missing'} | " + " | ".join(str(counts[(t, s)]) for s in tokens) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", help="the distillation YAML (its holdout questions are measured)")
    p.add_argument("--questions", type=int, default=None, help="held-out positions to use (default: all)")
    p.add_argument("--student", help="distilled model folder (default: the config's out/model)")
    p.add_argument("--device", help="cpu, cuda (default: the config's)")
    p.add_argument("--samples", type=int, default=1,
                   help="samples per passage in the timed answers (CALM samples 3; default 1, greedy)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature when --samples > 1")
    p.add_argument("--json", help="also write all records to this file")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = run(args)
    table = markdown(result)
    print(table)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**result, "table": table}, indent=1, ensure_ascii=False) + "\n")
        print(f"records: {args.json}")


if __name__ == "__main__":
    main()
