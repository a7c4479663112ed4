"""LoRA adapters by folder or packaged name, and the base generator each was trained on.

A packaged adapter (the project's CALM model, `calm-xcsqa-6lang`) ships as package data under
`calm_rag/data/adapters/<name>/`: a peft folder (fp16 `adapter_model.safetensors`, `adapter_config.json`
whose `base_model_name_or_path` is a packaged generator name) plus `calm_rag_adapter.json` with the
run's config and metrics. `calm-rag calm train` writes the same sidecar into every adapter it makes,
so an adapter names its base generator wherever it is moved; `--model` may only repeat it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from calm_rag.models import PACKAGED, ModelError, model_dir

PACKAGED_ADAPTERS_DIR = Path(__file__).parent / "data" / "adapters"
SIDECAR = "calm_rag_adapter.json"


def packaged_adapters() -> dict[str, Path]:
    """Packaged adapter names -> their folders inside the installed package."""
    if not PACKAGED_ADAPTERS_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(PACKAGED_ADAPTERS_DIR.iterdir()) if (p / "adapter_config.json").is_file()}


def adapter_folder(spec: str) -> Path:
    """A folder path, or a packaged adapter's folder; anything else is an error listing both kinds."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    shipped = packaged_adapters()
    if spec in shipped:
        return shipped[spec]
    names = ", ".join(shipped) or "none in this install"
    raise ModelError(f"--adapter {spec}: no such adapter folder and no packaged adapter of that name (packaged: "
                     f"{names}); give RUN/train/adapter of a calm-rag calm train run or a packaged name")


def model_identity(spec: str) -> str:
    """One spelling per model: a packaged name for the name or its cache folder, a resolved path for a folder,
    else the hub id as given."""
    if spec in PACKAGED:
        return spec
    path = Path(spec).expanduser()
    if path.exists():
        resolved = path.resolve()
        for name in PACKAGED:
            if resolved == model_dir(name).resolve():
                return name
        return str(resolved)
    return spec


def adapter_base(folder: str | Path) -> str | None:
    """The generator an adapter was trained on: its sidecar's, else peft's base_model_name_or_path (None if
    neither says)."""
    folder = Path(folder)
    for name, key in ((SIDECAR, "generator"), ("adapter_config.json", "base_model_name_or_path")):
        value = _json_object(folder / name).get(key)
        if value:
            return model_identity(str(value))
    return None


def sidecar_steps(folder: str | Path) -> int | None:
    """The DPO step an adapter was saved at, as its sidecar records it (None: no sidecar, or no step)."""
    return _json_object(Path(folder) / SIDECAR).get("steps")


def _json_object(path: Path) -> dict[str, Any]:
    """A JSON object file of an adapter folder; {} when it is absent, a one-line error when it is damaged."""
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable JSON object ({exc}); the adapter folder is damaged") from exc
    if not isinstance(value, dict):
        raise ModelError(f"{path}: not a readable JSON object (a {type(value).__name__}); the adapter folder is damaged")
    return value


def generator_for(model: str | None, adapter: str | None, default: str) -> str:
    """The generator to load: the adapter's base unless `model` is given (then it must be that base)."""
    base = adapter_base(adapter_folder(adapter)) if adapter else None
    if model is None:
        return base or default
    check_base(model, adapter, base)
    return model


def check_base(model: str, adapter: str | None, base: str | None = None) -> None:
    """An adapter loaded on another model than its base is an error naming the base."""
    if not adapter:
        return
    base = base or adapter_base(adapter_folder(adapter))
    if base is not None and model_identity(model) != base:
        raise ModelError(f"--adapter {adapter} was trained on {base}, not {model}; pass --model {base} "
                         f"(or leave --model out: an adapter loads its own base)")


def write_sidecar(folder: str | Path, generator: str, **extra: Any) -> None:
    path = Path(folder) / SIDECAR
    path.write_text(json.dumps({"generator": model_identity(generator), **extra}, indent=2) + "\n", encoding="utf-8")


def export_adapter(src: str | Path, out: str | Path, generator: str, **extra: Any) -> Path:
    """A run's adapter as a packaged one: fp16 weights, the base named by its packaged name, no tokenizer
    (the base's is used), the sidecar with `extra` (config, metrics). Written to a temp folder, then renamed."""
    import torch
    from safetensors.torch import load_file, save_file

    src, out = Path(src), Path(out)
    weights = load_file(str(src / "adapter_model.safetensors"))
    acfg = json.loads((src / "adapter_config.json").read_text(encoding="utf-8"))
    acfg["base_model_name_or_path"] = model_identity(generator)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file({k: v.to(torch.float16).contiguous() for k, v in weights.items()},
                  str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(acfg, indent=2) + "\n", encoding="utf-8")
        write_sidecar(tmp, generator, **extra)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def trained_with(folder: str | Path, train: dict[str, Any], train_config: dict[str, Any]) -> dict[str, Any] | None:
    """The sidecar of an adapter `calm train` finished on these pairs (`train`: pairs hash, model, LoRA shape)
    with these settings, else None: a rerun then trains nothing (resuming at the last checkpoint would train
    one step more than asked)."""
    try:
        done = json.loads((Path(folder) / SIDECAR).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    same = isinstance(done, dict) and done.get("train") == train and done.get("train_config") == train_config
    return done if same and isinstance(done.get("steps"), int) else None

