"""Build, save and load FAISS indexes that describe themselves (manifest.json) and resume after interrupts.

An index folder holds `index.faiss` (always a CPU index), `passages.jsonl` (row i = vector i) and
`manifest.json` (format version, embedder id/dim/prompts and a probe vector, normalisation, FAISS factory,
corpus files with sha256, chunking, counts, build time). Vectors are unit-norm and the metric is inner
product, so scores are cosine similarities. Embeddings are checkpointed in shards under
`<out_dir>.partial/`, and the finished folder appears with one rename.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calm_rag.config import ChunkConfig, IndexConfig
from calm_rag.corpora import chunk_documents, corpus_files, load_documents, passage_embed_text
from calm_rag.records import Passage, RecordError, atomic_file, atomic_write_text, file_sha256, read_jsonl, write_jsonl

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
PASSAGES_FILE = "passages.jsonl"
MANIFEST_FILE = "manifest.json"
PROBE_TEXT = "calm-rag probe: the heart pumps blood; 心脏泵血。"


class IndexBuildError(ValueError):
    """An index that cannot be built from these inputs; the message says what to change."""


class IndexLoadError(ValueError):
    """An index folder that cannot be used; the message names the file and the fix."""


# ---------------------------------------------------------------- FAISS

def _unwrap(index: Any) -> Any:
    import faiss

    return faiss.downcast_index(index)


def make_faiss_index(vectors: np.ndarray, factory: str = "Flat", *, train_size: int = 65536, seed: int = 0,
                     use_gpu: bool = True, ef_construction: int = 80) -> tuple[Any, str]:
    """Train (if needed) and fill a cosine (inner product) FAISS index; returns (CPU index, device used)."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    try:
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise IndexBuildError(f"FAISS cannot parse factory {factory!r} for dim {d} "
                              f"({str(exc).strip().splitlines()[-1]}); try Flat, HNSW32 or IVF256,PQ16") from exc
    inner = _unwrap(index)
    if hasattr(inner, "hnsw"):
        inner.hnsw.efConstruction = ef_construction
    device, work = "cpu", index
    ngpu = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if use_gpu and ngpu > 0:
        try:
            work = faiss.index_cpu_to_all_gpus(index)
            device = f"gpu x{ngpu}"
        except (RuntimeError, AttributeError) as exc:  # e.g. HNSW has no GPU version
            log.info("FAISS GPU cannot hold %s (%s); building on CPU", factory, exc)
    if not work.is_trained:
        n_train = min(n, train_size)
        rng = np.random.default_rng(seed)
        sample = vectors[np.sort(rng.choice(n, n_train, replace=False))]
        try:
            work.train(sample)
        except RuntimeError as exc:
            raise IndexBuildError(f"FAISS could not train {factory!r} on {n_train} vectors "
                                  f"({str(exc).strip().splitlines()[-1]}); use fewer IVF lists / PQ bits, "
                                  "or Flat / HNSW32 for a small corpus") from exc
    work.add(vectors)
    if device != "cpu":
        index = faiss.index_gpu_to_cpu(work)
    return index, device


# ---------------------------------------------------------------- build


def _embed_resumable(texts: list[str], encoder: Any, emb_dir: Path, cfg: IndexConfig,
                     on_batch: Callable[[int, int], None] | None, progress: bool) -> np.ndarray:
    """Embed in shards saved as .npy; existing shards are reused. Length-sorted within a shard, like
    sentence-transformers does within one encode call, so padding stays as low as in a single call."""
    from tqdm.auto import tqdm

    emb_dir.mkdir(parents=True, exist_ok=True)
    n, dim = len(texts), encoder.dim
    n_shards = math.ceil(n / cfg.shard_size)
    shards: list[np.ndarray] = []
    done = 0
    for s in range(n_shards):
        lo, hi = s * cfg.shard_size, min(n, (s + 1) * cfg.shard_size)
        path = emb_dir / f"shard-{s:05d}.npy"
        if path.exists():
            arr = np.load(path, allow_pickle=False)
            if arr.shape == (hi - lo, dim) and arr.dtype == np.float32:
                shards.append(arr)
                done = hi
                continue
            log.warning("%s has shape %s, expected %s; re-embedding it", path, arr.shape, (hi - lo, dim))
        break
    if done:
        log.info("resuming: %d of %d chunks already embedded in %s", done, n, emb_dir)
    batches = 0
    with tqdm(total=n, initial=done, unit="chunk", desc="embedding", disable=not progress) as bar:
        for s in range(len(shards), n_shards):
            lo, hi = s * cfg.shard_size, min(n, (s + 1) * cfg.shard_size)
            order = sorted(range(lo, hi), key=lambda i: -len(texts[i]))
            out = np.empty((hi - lo, dim), dtype=np.float32)
            for b in range(0, hi - lo, cfg.batch_size):
                idx = order[b:b + cfg.batch_size]
                out[np.asarray(idx) - lo] = encoder.encode_document([texts[i] for i in idx],
                                                                    batch_size=len(idx))
                bar.update(len(idx))
                batches += 1
                if on_batch is not None:
                    on_batch(batches, lo + b + len(idx))
            with atomic_file(emb_dir / f"shard-{s:05d}.npy", "wb") as fh:
                np.save(fh, out, allow_pickle=False)
            shards.append(out)
    return np.concatenate(shards) if shards else np.zeros((0, dim), dtype=np.float32)


INDEX_FILES = (INDEX_FILE, PASSAGES_FILE, MANIFEST_FILE)


def is_index_folder(path: Path) -> bool:
    """True when `path` is a folder holding only a calm-rag index (its manifest says so)."""
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(manifest, dict) and "format_version" in manifest and isinstance(manifest.get("files"), dict)
            and all(p.name in INDEX_FILES for p in path.iterdir()))


def check_output(out_dir: Path, overwrite: bool) -> None:
    """Refuse an output that is a file, or an existing folder unless `overwrite` and it is a calm-rag index
    (its manifest says so, and it holds nothing else): a user's folder is never deleted."""
    if out_dir.exists() and not out_dir.is_dir():
        raise IndexBuildError(f"{out_dir} is a file, not an index folder; choose a folder name for --out")
    work = out_dir.with_name(out_dir.name + ".partial")
    if work.exists():
        _partial_state(work)
    if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        return
    if not overwrite:
        raise IndexBuildError(f"{out_dir} already exists; pass overwrite=True (--overwrite) or choose another folder")
    if not is_index_folder(out_dir):
        raise IndexBuildError(f"{out_dir} is not a calm-rag index folder (no calm-rag {MANIFEST_FILE}, or files of "
                              f"its own), so --overwrite will not delete it; choose another --out folder")


def _partial_state(work: Path) -> dict[str, Any]:
    """The state of an interrupted build in `work`; a folder of that name that we did not write is refused."""
    try:
        state = json.loads((work / "state.json").read_text())
    except (OSError, ValueError):
        state = None
    if not isinstance(state, dict):
        if work.is_dir() and not any(work.iterdir()):
            return {}
        raise IndexBuildError(f"{work} exists but is not an interrupted calm-rag build (no state.json); move it "
                              f"away or choose another --out folder")
    return state


def _fingerprint(docs: list[Any], encoder: Any, chunk: ChunkConfig) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT_VERSION, "embedder": encoder.describe(),
                         "chunk": dataclasses.asdict(chunk)}, sort_keys=True).encode())
    for d in docs:
        h.update(json.dumps(dataclasses.asdict(d), ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def _probe(encoder: Any) -> list[float]:
    return [round(float(x), 6) for x in encoder.encode_document([PROBE_TEXT])[0]]


def build_index(docs_or_files: Iterable[Any], encoder: Any, out_dir: str | Path, cfg: IndexConfig | None = None, *,
                factory: str | None = None, chunk: ChunkConfig | None = None, batch_size: int | None = None,
                overwrite: bool = False, on_batch: Callable[[int, int], None] | None = None,
                progress: bool = True, documents: list[Any] | None = None) -> Path:
    """Chunk, embed (checkpointed), index and save; returns the finished folder.

    `docs_or_files`: Documents, corpus paths (globs allowed), CorpusSources or HF Datasets;
    `documents`: those inputs already loaded with `load_documents` (they are not read again).
    `overwrite` replaces only a folder that is a calm-rag index (see `check_output`).
    `on_batch(batches_done, chunks_done)` runs after every embedded batch (progress hooks; tests
    interrupt a build by raising from it). Running the same call again resumes from `<out_dir>.partial/`.
    """
    import faiss

    cfg = cfg or IndexConfig()
    overrides = {k: v for k, v in {"factory": factory, "chunk": chunk, "batch_size": batch_size}.items()
                 if v is not None}
    cfg = dataclasses.replace(cfg, **overrides) if overrides else cfg
    out_dir = Path(out_dir)
    check_output(out_dir, overwrite)
    started = time.time()
    items = list(docs_or_files)
    files = corpus_files(items)
    docs = load_documents(items) if documents is None else documents
    if not docs:
        raise IndexBuildError(f"no documents to index for {out_dir}; check the corpus paths")
    fingerprint = _fingerprint(docs, encoder, cfg.chunk)

    work = out_dir.with_name(out_dir.name + ".partial")
    state_path = work / "state.json"
    if work.exists():
        state = _partial_state(work)
        if state.get("fingerprint") != fingerprint:
            log.warning("%s holds a build of other inputs (corpus, embedder or chunking changed); starting over", work)
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_text(state_path, json.dumps({"fingerprint": fingerprint, "out_dir": str(out_dir)}))

    passages_path = work / PASSAGES_FILE
    if passages_path.exists():
        passages = list(read_jsonl(passages_path, Passage))
    else:
        t = time.time()
        passages = list(chunk_documents(docs, encoder, cfg.chunk))
        write_jsonl(passages_path, passages)
        log.info("chunked %d documents into %d passages in %.1fs", len(docs), len(passages), time.time() - t)
    texts = [passage_embed_text(p, cfg.chunk) for p in passages]
    budget = encoder.max_seq_length - encoder.count_tokens(encoder.document_prompt) - 2
    if cfg.chunk.max_tokens > budget:
        log.warning("chunk max_tokens=%d exceeds what %s reads after its prompt (%d): chunk tails will be "
                    "truncated; lower chunk.max_tokens", cfg.chunk.max_tokens, encoder.model_id, budget)

    t_embed = time.time()
    vectors = _embed_resumable(texts, encoder, work / "emb", cfg, on_batch, progress)
    embed_s = time.time() - t_embed
    t_index = time.time()
    index, device = make_faiss_index(vectors, cfg.factory, train_size=cfg.train_size, seed=cfg.seed,
                                     use_gpu=cfg.use_gpu, ef_construction=cfg.ef_construction)
    index_s = time.time() - t_index

    staged = work / "out"
    if staged.exists():
        shutil.rmtree(staged)
    staged.mkdir()
    faiss.write_index(index, str(staged / INDEX_FILE))
    shutil.copyfile(passages_path, staged / PASSAGES_FILE)
    manifest = {
        "format_version": FORMAT_VERSION,
        "embedder": {**encoder.describe(), "probe_text": PROBE_TEXT, "probe": _probe(encoder)},
        "normalized": True,
        "metric": "inner_product",
        "factory": cfg.factory,
        "index_config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "chunk"},
        "chunking": dataclasses.asdict(cfg.chunk),
        "corpus": {"files": files, "fingerprint": fingerprint},
        "counts": {"documents": len(docs), "passages": len(passages),
                   "by_lang": dict(sorted(Counter(p.lang for p in passages).items())),
                   "by_source": dict(sorted(Counter(p.source for p in passages).items()))},
        "files": {name: {"bytes": (staged / name).stat().st_size, "sha256": file_sha256(staged / name)}
                  for name in (INDEX_FILE, PASSAGES_FILE)},
        "build": {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
                  "seconds": round(time.time() - started, 2), "embed_seconds": round(embed_s, 2),
                  "index_seconds": round(index_s, 2), "faiss_device": device, "encoder_device": encoder.device,
                  "faiss_version": faiss.__version__},
    }
    atomic_write_text(staged / MANIFEST_FILE, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")

    if out_dir.exists():  # the old index moves into our own work folder, never onto a name a user may hold
        check_output(out_dir, overwrite)
        replaced = work / "replaced"
        if replaced.exists():
            shutil.rmtree(replaced)
        os.replace(out_dir, replaced)
    os.replace(staged, out_dir)
    shutil.rmtree(work)
    log.info("index %s: %d passages from %d documents, %s, %.1fs", out_dir, len(passages), len(docs),
             cfg.factory, time.time() - started)
    return out_dir


# ---------------------------------------------------------------- load

@dataclass
class LoadedIndex:
    """A FAISS index with its passages (row i = vector i) and manifest."""

    path: Path
    index: Any
    passages: list[Passage]
    manifest: dict[str, Any]

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise IndexLoadError(f"{path}: no such index folder; build it first (calm-rag index build <recipe>)")
    man_path = path / MANIFEST_FILE
    if not man_path.exists():
        raise IndexLoadError(f"{man_path}: missing, so {path} is not a finished calm-rag index; rebuild it")
    try:
        manifest = json.loads(man_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexLoadError(f"{man_path}: not valid JSON ({exc}); rebuild the index") from exc
    if not isinstance(manifest, dict):
        raise IndexLoadError(f"{man_path}: not a calm-rag manifest (a JSON {type(manifest).__name__}, not an object); "
                             "rebuild the index")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise IndexLoadError(f"{man_path}: index format version {version}, this calm-rag reads {FORMAT_VERSION}; "
                             "rebuild the index with this version")
    for section, keys in MANIFEST_KEYS.items():
        value = manifest.get(section)
        if not isinstance(value, dict):
            raise IndexLoadError(f"{man_path}: no {section!r} entry (the manifest is incomplete or was edited); "
                                 "rebuild the index")
        missing = [k for k in keys if k not in value]
        if missing:
            raise IndexLoadError(f"{man_path}: {section!r} has no {', '.join(map(repr, missing))} (the manifest is "
                                 "incomplete or was edited); rebuild the index")
    if not isinstance(manifest.get("factory"), str):
        raise IndexLoadError(f"{man_path}: no 'factory' entry (the manifest is incomplete or was edited); "
                             "rebuild the index")
    return manifest


# what loading and `index info` read from a manifest: a manifest without them is refused, naming the key
MANIFEST_KEYS = {"embedder": ("id", "dim"), "counts": ("documents", "passages", "by_lang", "by_source"),
                 "files": ()}


def check_encoder(manifest: Mapping[str, Any], encoder: Any, where: str = MANIFEST_FILE) -> None:
    """Fail when `encoder` is not the embedder the index was built with (dimension, prompts, probe vector)."""
    emb = manifest.get("embedder")
    if not isinstance(emb, dict) or "id" not in emb or "dim" not in emb:
        raise IndexLoadError(f"{where}: no 'embedder' entry with id and dim (the manifest is incomplete or was "
                             "edited); rebuild the index")
    fix = "load the index's embedder, or rebuild the index with this one"
    same = str(emb["id"]) == str(encoder.model_id)
    # the same name on both sides means the model's files changed since the build, not that another model was given
    now = (f"its embedder {emb['id']} now" if same else f"the encoder {encoder.model_id}")
    fix_same = ("the model at that name changed since the build (other weights or settings): restore it, or "
                "rebuild the index with it")
    if int(emb["dim"]) != encoder.dim:
        other = (f"{now} has dim {encoder.dim}" if same else f"the encoder is {encoder.model_id} (dim {encoder.dim})")
        raise IndexLoadError(f"{where}: index built with embedder {emb['id']} (dim {emb['dim']}), but {other}; "
                             f"{fix_same if same else fix}")
    if emb.get("prompts") and emb["prompts"] != encoder.prompts:
        raise IndexLoadError(f"{where}: index built with prompts {emb['prompts']}, but {now} uses "
                             f"{encoder.prompts}; {fix_same if same else fix}")
    probe = np.asarray(emb.get("probe") or [], dtype=np.float32)
    if probe.size:
        mine = encoder.encode_document([emb.get("probe_text", PROBE_TEXT)])[0]
        cos = float(probe @ mine / (np.linalg.norm(probe) * np.linalg.norm(mine) + 1e-12))
        if cos < 0.99:
            raise IndexLoadError(f"{where}: index built with embedder {emb['id']}, but {now} gives "
                                 f"other vectors (probe cosine {cos:.3f}); {fix_same if same else fix}")
    if emb["id"] != encoder.model_id:
        log.info("embedder id %s differs from the index's %s, but its vectors match", encoder.model_id, emb["id"])


def load_index(path: str | Path, expect_encoder: Any = None, verify: bool = True) -> LoadedIndex:
    """Load an index folder, checking manifest, file sizes/hashes, embedder and passage count."""
    import faiss

    path = Path(path)
    manifest = _read_manifest(path)
    if expect_encoder is not None:
        check_encoder(manifest, expect_encoder, str(path / MANIFEST_FILE))
    files = manifest.get("files", {})
    for name in (INDEX_FILE, PASSAGES_FILE):
        f = path / name
        if not f.exists():
            raise IndexLoadError(f"{f}: missing; rebuild the index")
        want = files.get(name, {})
        size = f.stat().st_size
        if "bytes" in want and size != want["bytes"]:
            raise IndexLoadError(f"{f}: {size} bytes but the manifest says {want['bytes']}: the file is truncated "
                                 "or was replaced; rebuild the index")
        if verify and "sha256" in want and file_sha256(f) != want["sha256"]:
            raise IndexLoadError(f"{f}: sha256 differs from the manifest: the file is corrupt or was replaced; "
                                 "rebuild the index")
    idx_path = path / INDEX_FILE
    try:
        index = faiss.read_index(str(idx_path))
    except RuntimeError as exc:
        raise IndexLoadError(f"{idx_path}: FAISS cannot read it ({str(exc).strip().splitlines()[-1]}): the file "
                             "is corrupt or truncated; rebuild the index") from exc
    if index.d != int(manifest["embedder"]["dim"]):
        raise IndexLoadError(f"{idx_path}: vectors have dim {index.d}, the manifest says "
                             f"{manifest['embedder']['dim']}; rebuild the index")
    pass_path = path / PASSAGES_FILE
    try:
        passages = list(read_jsonl(pass_path, Passage))
    except RecordError as exc:
        raise IndexLoadError(f"{exc}; the chunk store is damaged: rebuild the index") from exc
    if len(passages) != index.ntotal:
        raise IndexLoadError(f"{pass_path}: {len(passages)} passages but {INDEX_FILE} holds {index.ntotal} vectors: "
                             "they come from different builds; rebuild the index")
    counts = manifest["counts"]
    by_lang = counts["by_lang"] if isinstance(counts["by_lang"], dict) else {}
    lang_total = sum(v for v in by_lang.values() if isinstance(v, int))
    if counts["passages"] != index.ntotal or lang_total != index.ntotal:
        raise IndexLoadError(f"{path / MANIFEST_FILE}: counts say {counts['passages']!r} passages ({lang_total} by "
                             f"language) but {INDEX_FILE} holds {index.ntotal}: the manifest was edited or comes "
                             "from another build; rebuild the index")
    return LoadedIndex(path=path, index=index, passages=passages, manifest=manifest)


def index_info(path: str | Path) -> dict[str, Any]:
    """A summary of an index folder, for `calm-rag index info`: the folder is checked as loading checks it
    (manifest, file sizes and hashes, FAISS file, chunk store, counts), so a healthy summary means it loads."""
    path = Path(path)
    m = load_index(path).manifest
    return {
        "path": str(path),
        "format_version": m["format_version"],
        "embedder": m["embedder"]["id"],
        "dim": m["embedder"]["dim"],
        "prompts": m["embedder"].get("prompts"),
        "factory": m["factory"],
        "metric": m.get("metric"),
        "documents": m["counts"]["documents"],
        "passages": m["counts"]["passages"],
        "by_lang": m["counts"]["by_lang"],
        "by_source": m["counts"]["by_source"],
        "chunking": m.get("chunking"),
        "corpus_files": [f.get("path") for f in (m.get("corpus") or {}).get("files", []) if isinstance(f, dict)],
        "built": (m.get("build") or {}).get("started"),
        "build_seconds": (m.get("build") or {}).get("seconds"),
        "bytes": sum((path / n).stat().st_size for n in (INDEX_FILE, PASSAGES_FILE, MANIFEST_FILE)
                     if (path / n).exists()),
    }
