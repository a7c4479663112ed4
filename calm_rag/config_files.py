"""The one YAML loader: run configs, distillation configs (and, through `read_yaml` and `path_in_file`, index
recipes), with one rule for paths: relative to the file that names them. Values are type-checked against
the dataclasses of `config.py` with a one-line error naming the file, section and field.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from calm_rag.config import SECTIONS, ConfigError, DistillConfig, RunConfig, demo_files

C = TypeVar("C")

def from_mapping(cls: type[C], data: dict[str, Any] | None, where: str) -> C:
    """Build a config from a mapping, naming any unknown key and the keys that exist."""
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(names)}")
    hints = _field_types(cls)
    for key, value in data.items():  # a comma list for a list-of-strings field: languages: en,zh
        if isinstance(value, str) and _is_str_tuple(hints.get(key)):
            data[key] = tuple(x.strip() for x in value.split(",") if x.strip())
        elif isinstance(value, list) and _is_str_tuple(hints.get(key)):
            data[key] = tuple(value)
    check_types(cls, data, where)
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _field_types(cls: type) -> dict[str, Any]:
    import typing

    return typing.get_type_hints(cls)


def _is_str_tuple(tp: Any) -> bool:
    import types
    import typing

    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_is_str_tuple(a) for a in typing.get_args(tp))
    return typing.get_origin(tp) in (tuple, list) and typing.get_args(tp)[:1] == (str,)


def _type_ok(value: Any, tp: Any) -> bool:
    """Whether `value` fits the annotation `tp` (ints count as floats; bools are not numbers)."""
    import collections.abc
    import types
    import typing

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or isinstance(tp, TypeVar):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is Path:
        return isinstance(value, (str, Path))
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return False
        inner = args[0] if args and (len(args) == 1 or args[1] is Ellipsis) else None
        return inner is None or all(_type_ok(v, inner) for v in value)
    if origin in (dict, collections.abc.Mapping) or tp in (dict, collections.abc.Mapping):
        if not isinstance(value, collections.abc.Mapping):
            return False
        return not args or all(_type_ok(k, args[0]) and _type_ok(v, args[1]) for k, v in value.items())
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _type_words(tp: Any) -> str:
    import types
    import typing

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_words(a) for a in args)
    if origin in (tuple, list):
        return f"a list of {_type_words(args[0]).removeprefix('a ')}s" if args else "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    words = {bool: "true or false", int: "a whole number", float: "a number", str: "a string",
             type(None): "unset (null)", Path: "a path"}
    return words.get(tp, f"a {getattr(tp, '__name__', tp)}")


def check_types(cls: type, data: dict[str, Any], where: str) -> None:
    """Check each given value against its field's annotation, so a wrong type names the key and the type
    wanted (`generate.n: 1.5`, `max_new_tokens: lots`) before the config is built, not deep in a stage."""
    hints = _field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key, value in data.items():
        f = fields.get(key)
        if f is None or key not in hints:
            continue
        if value is None and f.default is None:
            continue
        if _type_ok(value, hints[key]) or isinstance(value, f.metadata.get("accepts", ())):
            continue
        hint = ""
        if isinstance(value, str) and _type_ok(1.0, hints[key]):
            try:
                float(value)
                hint = (" (YAML read it as text: write a plain number, unquoted, with a dot before an exponent "
                        "such as 5.0e-5)")
            except ValueError:
                pass
        given = {bool: "a boolean", int: "a whole number", float: "a decimal number", str: "text", tuple: "a list",
                 list: "a list", dict: "a mapping"}.get(type(value), f"a {type(value).__name__}")
        raise ConfigError(f"{where}: {key}={value!r} is {given}, but {key} takes {_type_words(hints[key])}{hint}; "
                          "fix that value")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping, or a ConfigError naming the file."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for name, section in raw.items():
        if name in SECTIONS and section is not None and not isinstance(section, dict):
            raise ConfigError(f"{path}: section {name!r} must be a mapping")
    return raw


def load_run_config(path: str | Path | None = None, **sections: dict[str, Any]) -> RunConfig:
    """A RunConfig from a YAML file (paths relative to the file; without one, to the working folder) and
    section overrides."""
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        raw = read_yaml(path)
        base = Path(path).resolve().parent
    unknown = set(raw) - set(SECTIONS) - {"index_recipe"}
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {sorted(unknown)}; known: {sorted(SECTIONS)} and index_recipe")
    built: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        data = dict(raw.get(name) or {})
        if name == "model":  # a folder the file names (./, ../ or existing) is relative to it; names, hub ids stay
            for key in ("generator", "adapter"):
                if data.get(key):
                    data[key] = model_path(base, data[key])
        data.update({k: v for k, v in (sections.get(name) or {}).items() if v is not None})
        if name == "data":
            data.setdefault("files", demo_files())
            data["files"] = {lang: str(path_in_file(base, p)) for lang, p in data["files"].items()}
            if data.get("split"):
                data["split"] = str(path_in_file(base, data["split"]))
        if name == "selfrag" and data.get("index"):
            data["index"] = str(path_in_file(base, data["index"]))
        if name == "calm" and data.get("reuse"):
            data["reuse"] = str(path_in_file(base, data["reuse"]))
        built[name] = from_mapping(cls, data, f"{path or 'defaults'} [{name}]")
    cfg = RunConfig(**built, index_recipe=raw.get("index_recipe", "demo"))
    missing = [lang for lang in cfg.all_languages if lang not in cfg.data.files]
    if missing:  # checked here, so a run fails when it is configured, not when its first stage reads the data
        given = ", ".join(cfg.data.files)
        raise ConfigError(f"{path or 'defaults'} [data]: data.files has no file for language(s) {missing} of "
                          f"calm.languages {list(cfg.calm.languages)} / eval.languages (files given: {given}); add "
                          f"{missing[0]}: PATH under data.files, or run fewer languages (--langs {given.replace(' ', '')})")
    return cfg


def saved_run_config(folder: str | Path, **sections: dict[str, Any]) -> RunConfig:
    """The config a run folder was started with (its manifest.json) and section overrides (None: keep the
    saved value), so a stage reruns in a run folder without its --config."""
    path = Path(folder) / "manifest.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))["config"]
        known = {name: {f.name for f in dataclasses.fields(cls)} for name, cls in SECTIONS.items()}
        merged = {name: {**{k: v for k, v in (saved.get(name) or {}).items() if k in known[name]},  # removed options go
                         **{k: v for k, v in (sections.get(name) or {}).items() if v is not None}}
                  for name in SECTIONS}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path}: cannot read the run's config ({exc}); pass the run YAML with --config") from exc
    return dataclasses.replace(load_run_config(None, **merged), index_recipe=saved.get("index_recipe", "demo"))


def load_distill_config(path: str | Path, **overrides: Any) -> DistillConfig:
    """A DistillConfig from the `distill:` section of a YAML file; relative paths are relative to the file.

    `overrides` (None: not given) replace file values; their relative paths stay relative to the
    working directory, as a command-line path would. A model or embedder that is not an existing
    path is a packaged name or hub id and stays as written.
    """
    top = read_yaml(path)
    if set(top) != {"distill"} or not isinstance(top["distill"], Mapping):
        raise ConfigError(f"{path}: expected one top-level section `distill:` holding the settings "
                          f"(found {sorted(top) or 'nothing'}); see configs/distill.yaml")
    raw = dict(top["distill"])
    base = Path(path).resolve().parent
    for key in ("data", "index", "out", "model", "embedder"):
        if raw.get(key) is None:
            continue
        if key == "data":
            if not isinstance(raw["data"], Mapping):
                raise ConfigError(f"{path}: data must map languages to files, e.g. data: {{en: en.json}}")
            raw["data"] = {lang: str(path_in_file(base, p)) for lang, p in raw["data"].items()}
        elif key in ("model", "embedder"):
            raw[key] = model_path(base, raw[key])
        else:
            raw[key] = str(path_in_file(base, raw[key]))
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return from_mapping(DistillConfig, raw, f"{path} [distill]")


def path_in_file(base: Path, p: Any) -> Path:
    """The one rule for paths in a YAML file: relative to the file's folder (normalised); absolute ones as given."""
    q = Path(str(p)).expanduser()
    return q if q.is_absolute() else Path(os.path.normpath(base / q))


def model_path(base: Path, value: Any) -> str:
    """A model or adapter in a YAML file: a folder (written ./ or ../, or existing beside the file) becomes an
    absolute path; a packaged name or hub id stays as written."""
    text = str(value)
    candidate = path_in_file(base, text)
    return str(candidate.resolve()) if text.startswith(".") or candidate.exists() else text
