"""Write a Hugging Face causal-LM folder, or a peft LoRA adapter, as GGUF for the llama.cpp backend.

Packaged generators already are GGUF files and run as shipped; this is for everything else the
llama.cpp backend is given: the tiny test models, a local folder or hub download, the distilled
Self-RAG student (reflection tokens in its vocabulary), and an adapter with trainable token rows
merged into its base. Tensor names come from the `gguf` package's own HF-to-GGUF name map.

Left out: architectures other than the Qwen2 and Llama families (a clear error names the other
backend), and any quantization below 8 bits (re-quantizing 4-bit weights loses accuracy).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import contextlib
import os

log = logging.getLogger(__name__)

ARCHS = {"Qwen2ForCausalLM": "QWEN2", "LlamaForCausalLM": "LLAMA"}
FORMAT_VERSION = 2  # part of every cached file's name: a change here converts again


class ExportError(ValueError):
    """A folder or adapter cannot be written as GGUF; the message names it and the way out."""


def _arch(config: dict, where: Path) -> str:
    name = (config.get("architectures") or ["?"])[0]
    if name not in ARCHS:
        raise ExportError(f"{where}: architecture {name} is not supported by the llama.cpp backend "
                          f"(supported: {', '.join(ARCHS)}); use --backend transformers")
    return ARCHS[name]


def _rope_theta(config: dict, where: Path) -> float:
    """RoPE base from either config layout (transformers 5 nests it in rope_parameters)."""
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ("default", None):
        raise ExportError(f"{where}: RoPE scaling {kind!r} is not supported by the llama.cpp export; "
                          f"use --backend transformers")
    return float(config.get("rope_theta") or params.get("rope_theta") or 10000.0)


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise ExportError(f"{folder}: no config.json; give a Hugging Face model folder")
    return json.loads(path.read_text(encoding="utf-8"))


def _state(folder: Path) -> dict:
    """All safetensors tensors of a folder as float32 numpy arrays (no torch needed)."""
    import numpy as np
    from safetensors import safe_open

    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise ExportError(f"{folder}: no .safetensors weights; save the model with safe_serialization=True")
    state = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as fh:
            for key in fh.keys():
                state[key] = fh.get_tensor(key).float().numpy().astype(np.float32, copy=False)
    return state


def permute_qk(w, n_head: int, n_head_kv: int | None = None):
    """HF's rotate-half q/k rows into llama.cpp's interleaved RoPE order (Llama family only)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_tensors(state: dict, config: dict, arch: str):
    """(gguf name, array) pairs; q/k permuted for Llama; rotary buffers dropped."""
    import gguf

    blocks = int(config["num_hidden_layers"])
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch), blocks)
    heads, kv_heads = int(config["num_attention_heads"]), int(config.get("num_key_value_heads") or config["num_attention_heads"])
    for key, value in state.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue
        if arch == "LLAMA" and key.endswith(("q_proj.weight", "q_proj.bias")):
            value = permute_qk(value, heads, heads)
        elif arch == "LLAMA" and key.endswith(("k_proj.weight", "k_proj.bias")):
            value = permute_qk(value, heads, kv_heads)
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(f"tensor {key} has no GGUF name for {arch}; use --backend transformers")
        yield name, value


def _add_tensor(writer, name: str, value, precision: str) -> None:
    import gguf
    import numpy as np

    if value.ndim < 2 or precision == "f32":
        writer.add_tensor(name, value.astype(np.float32))
    elif precision == "f16":
        writer.add_tensor(name, value.astype(np.float16))
    elif value.shape[-1] % 32 == 0:
        q = gguf.quants.quantize(value, gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:  # rows too short for 32-value blocks (tiny models): keep them exact
        writer.add_tensor(name, value.astype(np.float16))


def _add_tokenizer(writer, folder: Path, n_vocab: int, arch: str) -> None:
    """The vocabulary llama.cpp needs to load the model; calm-rag itself tokenizes with the HF tokenizer."""
    import gguf

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ExportError(f"{folder}: no tokenizer.json (a fast tokenizer is needed); save the tokenizer with "
                          f"AutoTokenizer.save_pretrained")
    tok = json.loads(path.read_text(encoding="utf-8"))
    model = tok.get("model", {})
    if model.get("type") != "BPE":
        raise ExportError(f"{path}: tokenizer type {model.get('type')} is not byte-level BPE; use --backend transformers")
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [gguf.TokenType.UNUSED] * n_vocab
    for text, idx in model["vocab"].items():
        if idx < n_vocab:
            tokens[idx], types[idx] = text, gguf.TokenType.NORMAL
    for added in tok.get("added_tokens", []):
        if added["id"] < n_vocab:
            tokens[added["id"]] = added["content"]
            types[added["id"]] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2" if arch == "QWEN2" else "default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    cfg_path = folder / "tokenizer_config.json"
    tcfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    by_text = {t: i for i, t in enumerate(tokens)}
    for key, add in (("eos_token", writer.add_eos_token_id), ("pad_token", writer.add_pad_token_id),
                     ("bos_token", writer.add_bos_token_id)):
        value = tcfg.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if value in by_text:
            add(by_text[value])
    writer.add_add_bos_token(False)


def export_model(folder: str | Path, out: str | Path, precision: str = "q8_0") -> Path:
    """Write `folder` (config.json, safetensors, tokenizer.json) as one GGUF file at `out` (atomically)."""
    import gguf

    folder, out = Path(folder), Path(out)
    config = _read_config(folder)
    arch = _arch(config, folder)
    state = _state(folder)
    n_vocab = int(config["vocab_size"])
    heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    with _gguf_writer(out, arch) as writer:
        writer.add_name(folder.name)
        writer.add_context_length(int(config.get("max_position_embeddings", 4096)))
        writer.add_embedding_length(hidden)
        writer.add_block_count(int(config["num_hidden_layers"]))
        writer.add_feed_forward_length(int(config["intermediate_size"]))
        writer.add_head_count(heads)
        writer.add_head_count_kv(int(config.get("num_key_value_heads") or heads))
        writer.add_rope_freq_base(_rope_theta(config, folder))
        writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
        if config.get("head_dim"):
            writer.add_key_length(int(config["head_dim"]))
            writer.add_value_length(int(config["head_dim"]))
        writer.add_file_type({"q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "f16": gguf.LlamaFileType.MOSTLY_F16,
                              "f32": gguf.LlamaFileType.ALL_F32}[precision])
        _add_tokenizer(writer, folder, n_vocab, arch)
        template = _chat_template(folder)
        if template:
            writer.add_chat_template(template)
        for name, value in _gguf_tensors(state, config, arch):
            _add_tensor(writer, name, value, precision)
    return out


@contextlib.contextmanager
def _gguf_writer(out: Path, arch: str):
    """A GGUFWriter whose file appears at `out` complete or not at all (temp file beside it, renamed)."""
    import gguf

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, arch)])
        yield writer
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _chat_template(folder: Path) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    cfg_path = folder / "tokenizer_config.json"
    if cfg_path.is_file():
        value = json.loads(cfg_path.read_text(encoding="utf-8")).get("chat_template")
        return value if isinstance(value, str) else None
    return None


def adapter_needs_merge(adapter: str | Path) -> bool:
    """An adapter that changes whole token rows or modules (trainable_token_indices, modules_to_save)
    cannot be applied by llama.cpp at run time; it is merged into its base and converted once."""
    cfg = json.loads((Path(adapter) / "adapter_config.json").read_text(encoding="utf-8"))
    return bool(cfg.get("trainable_token_indices") or cfg.get("modules_to_save"))


def export_lora(adapter: str | Path, base_folder: str | Path, out: str | Path) -> Path:
    """A peft LoRA adapter as a GGUF LoRA file that llama.cpp applies at run time (scale alpha / r)."""
    import gguf
    import numpy as np

    adapter, base_folder, out = Path(adapter), Path(base_folder), Path(out)
    acfg_path = adapter / "adapter_config.json"
    if not acfg_path.is_file():
        raise ExportError(f"{adapter}: no adapter_config.json; give the adapter folder of `calm-rag calm train`")
    acfg = json.loads(acfg_path.read_text(encoding="utf-8"))
    if acfg.get("use_rslora") or acfg.get("use_dora"):
        raise ExportError(f"{adapter}: rsLoRA/DoRA adapters are not supported by the llama.cpp backend; "
                          f"use --backend transformers")
    config = _read_config(base_folder)
    arch = _arch(config, base_folder)
    state = _state(adapter)
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch), int(config["num_hidden_layers"]))
    pairs = []
    for key in sorted(k for k in state if ".lora_A." in k):
        base_key = key.split("base_model.model.", 1)[-1].replace(".lora_A.weight", ".weight")
        a, b = state[key], state[key.replace(".lora_A.", ".lora_B.")]
        if arch == "LLAMA" and base_key.endswith("q_proj.weight"):
            b = permute_qk(b, heads, heads)
        elif arch == "LLAMA" and base_key.endswith("k_proj.weight"):
            b = permute_qk(b, heads, kv_heads)
        name = names.get_name(base_key, try_suffixes=(".weight",))
        if name is None:
            raise ExportError(f"{adapter}: adapter tensor {key} targets a module llama.cpp does not name; "
                              f"use --backend transformers")
        pairs.append((name, a, b))
    if not pairs:
        raise ExportError(f"{adapter}: no LoRA weights (lora_A/lora_B) in adapter_model.safetensors")
    with _gguf_writer(out, arch) as writer:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(acfg.get("lora_alpha", acfg.get("r", 8))))
        for name, a, b in pairs:
            writer.add_tensor(name + ".lora_a", np.ascontiguousarray(a, dtype=np.float32))
            writer.add_tensor(name + ".lora_b", np.ascontiguousarray(b, dtype=np.float32))
    return out
