"""FAISS oracle tests, build/resume/load of index folders, manifest checks, recipes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from calm_rag.config import ChunkConfig, IndexConfig
from calm_rag.index import (FORMAT_VERSION, IndexBuildError, IndexLoadError, build_index, index_info, load_index,
                            make_faiss_index)
from calm_rag.index_recipes import load_recipe
from calm_rag.records import Document

REPO = Path(__file__).resolve().parent.parent
CFG = IndexConfig(chunk=ChunkConfig(max_tokens=48, overlap_tokens=8), batch_size=8, shard_size=16)
WORDS = {"en": "heart blood dog cat fever lung kidney liver cancer insulin".split(),
         "fr": "cœur sang chien chat fièvre poumon rein foie".split(),
         "zh": list("心脏血液狗猫发烧肺肾肝癌")}


def make_docs(n_en=24, n_zh=8, n_fr=8) -> list[Document]:
    rng = np.random.default_rng(0)
    docs = []
    for lang, n in (("en", n_en), ("zh", n_zh), ("fr", n_fr)):
        sep, end = ("", "。") if lang == "zh" else (" ", ". ")
        for i in range(n):
            sents = [sep.join(rng.choice(WORDS[lang], size=rng.integers(3, 12))) + end
                     for _ in range(rng.integers(1, 8))]
            docs.append(Document(f"{lang}-{i}", f"{lang} doc {i}", "".join(sents).strip(), lang,
                                 "src-a" if i % 2 else "src-b"))
    return docs


def unit(n, d, seed):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---------------------------------------------------------------- FAISS oracles

def test_flat_equals_brute_force_cosine():
    xb, xq = unit(500, 24, 1), unit(20, 24, 2)
    index, device = make_faiss_index(xb, "Flat")
    assert device == "cpu" or device.startswith("gpu")
    scores, ids = index.search(xq, 10)
    sims = xq @ xb.T
    expect = np.argsort(-sims, axis=1)[:, :10]
    np.testing.assert_array_equal(ids, expect)
    np.testing.assert_allclose(scores, np.take_along_axis(sims, expect, axis=1), atol=1e-5)


def test_hnsw_recall_close_to_exact():
    xb, xq = unit(3000, 24, 3), unit(50, 24, 4)
    index, _ = make_faiss_index(xb, "HNSW32")
    index.hnsw.efSearch = 64
    _, ids = index.search(xq, 10)
    exact = np.argsort(-(xq @ xb.T), axis=1)[:, :10]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])
    assert recall >= 0.9


def test_ivfpq_trains_and_returns_k():
    xb, xq = unit(2000, 32, 5), unit(10, 32, 6)
    index, _ = make_faiss_index(xb, "IVF16,PQ8x4", train_size=1000)  # 4-bit codes: 8-bit PQ training takes ~30 s here
    assert index.is_trained and index.ntotal == 2000
    index.nprobe = 4
    scores, ids = index.search(xq, 7)
    assert ids.shape == (10, 7) and (ids >= 0).all() and len(set(ids[0])) == 7
    assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_bad_factory_and_too_small_training():
    with pytest.raises(IndexBuildError, match="cannot parse factory 'Flop'"):
        make_faiss_index(unit(10, 8, 0), "Flop")
    with pytest.raises(IndexBuildError, match="could not train 'IVF256,Flat' on 50 vectors"):
        make_faiss_index(unit(50, 8, 0), "IVF256,Flat")


# ---------------------------------------------------------------- build / load

@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_encoder):
    out = tmp_path_factory.mktemp("idx") / "demo"
    return build_index(make_docs(), tiny_encoder, out, CFG, progress=False)


def test_build_writes_a_self_describing_folder(built, tiny_encoder):
    assert sorted(p.name for p in built.iterdir()) == ["index.faiss", "manifest.json", "passages.jsonl"]
    assert not built.with_name("demo.partial").exists()
    m = json.loads((built / "manifest.json").read_text())
    assert m["format_version"] == FORMAT_VERSION and m["normalized"] and m["metric"] == "inner_product"
    assert m["embedder"]["dim"] == tiny_encoder.dim and m["embedder"]["prompts"]["document"] == "passage: "
    assert m["factory"] == "Flat" and m["chunking"]["max_tokens"] == 48
    assert m["counts"]["documents"] == 40 and set(m["counts"]["by_lang"]) == {"en", "zh", "fr"}
    loaded = load_index(built, expect_encoder=tiny_encoder)
    assert loaded.ntotal == m["counts"]["passages"] == len(loaded.passages)
    # vectors are the normalised document embeddings of the stored passages, in order
    vecs = loaded.index.reconstruct_n(0, loaded.ntotal)
    from calm_rag.corpora import passage_embed_text

    again = tiny_encoder.encode_document([passage_embed_text(p, CFG.chunk) for p in loaded.passages[:5]])
    np.testing.assert_allclose(vecs[:5], again, atol=1e-4)
    info = index_info(built)
    assert info["passages"] == loaded.ntotal and info["embedder"] == tiny_encoder.model_id


def test_existing_output_needs_overwrite(built, tiny_encoder):
    with pytest.raises(IndexBuildError, match="already exists; pass overwrite=True"):
        build_index(make_docs(2, 0, 0), tiny_encoder, built, CFG, progress=False)


def test_interrupted_build_resumes_and_matches(tmp_path, tiny_encoder, built):
    docs = make_docs()
    calls = []

    def boom(batches, done):
        calls.append(done)
        if batches == 5:
            raise KeyboardInterrupt("simulated interrupt")

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        build_index(docs, tiny_encoder, out, CFG, on_batch=boom, progress=False)
    partial = tmp_path / "resumed.partial"
    assert not out.exists() and len(list((partial / "emb").glob("shard-*.npy"))) == 2  # 16-row shards of 8-row batches
    resumed = []
    build_index(docs, tiny_encoder, out, CFG, on_batch=lambda b, d: resumed.append(d), progress=False)
    assert not partial.exists()
    a, b = load_index(out), load_index(built)
    assert a.passages == b.passages
    total_batches = sum(-(-min(CFG.shard_size, a.ntotal - s) // CFG.batch_size)
                        for s in range(0, a.ntotal, CFG.shard_size))
    assert len(resumed) == total_batches - 4  # the two finished shards were not embedded again
    np.testing.assert_allclose(a.index.reconstruct_n(0, a.ntotal), b.index.reconstruct_n(0, b.ntotal), atol=1e-5)


def test_changed_inputs_restart_the_partial_build(tmp_path, tiny_encoder):
    out = tmp_path / "x"

    def stop(batches, done):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_index(make_docs(), tiny_encoder, out, CFG, on_batch=stop, progress=False)
    build_index(make_docs(4, 2, 2), tiny_encoder, out, CFG, progress=False)
    assert load_index(out).manifest["counts"]["documents"] == 8


def copy_index(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_manifest(path: Path, fn):
    m = json.loads((path / "manifest.json").read_text())
    fn(m)
    (path / "manifest.json").write_text(json.dumps(m))


def test_truncated_index_file(tmp_path, built):
    bad = copy_index(built, tmp_path / "t")
    data = (bad / "index.faiss").read_bytes()
    (bad / "index.faiss").write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexLoadError, match=r"t/index.faiss: .* bytes but the manifest says .*truncated.*rebuild"):
        load_index(bad)
    # even with a manifest that agrees, FAISS itself refuses the truncated file
    edit_manifest(bad, lambda m: m["files"]["index.faiss"].update(bytes=len(data) // 2, sha256="x"))
    with pytest.raises(IndexLoadError, match=r"index.faiss: FAISS cannot read it .*rebuild"):
        load_index(bad, verify=False)


def test_corrupt_index_file_fails_checksum(tmp_path, built):
    bad = copy_index(built, tmp_path / "c")
    data = bytearray((bad / "index.faiss").read_bytes())
    data[-10] ^= 0xFF
    (bad / "index.faiss").write_bytes(bytes(data))
    with pytest.raises(IndexLoadError, match=r"index.faiss: sha256 differs .*corrupt"):
        load_index(bad)


def test_format_version_and_missing_manifest(tmp_path, built):
    bad = copy_index(built, tmp_path / "v")
    edit_manifest(bad, lambda m: m.update(format_version=99))
    with pytest.raises(IndexLoadError, match=r"manifest.json: index format version 99, this calm-rag reads"):
        load_index(bad)
    (bad / "manifest.json").unlink()
    with pytest.raises(IndexLoadError, match="manifest.json: missing"):
        load_index(bad)
    with pytest.raises(IndexLoadError, match="no such index folder"):
        load_index(tmp_path / "nothing")


def test_passage_count_must_match_index(tmp_path, built):
    bad = copy_index(built, tmp_path / "p")
    lines = (bad / "passages.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (bad / "passages.jsonl").write_text("".join(lines[:-1]), encoding="utf-8")
    size = (bad / "passages.jsonl").stat().st_size
    edit_manifest(bad, lambda m: m["files"]["passages.jsonl"].update(bytes=size, sha256="x"))
    with pytest.raises(IndexLoadError, match=rf"passages.jsonl: {len(lines) - 1} passages but index.faiss holds "
                                             rf"{len(lines)} vectors"):
        load_index(bad, verify=False)


def test_other_embedder_is_refused(tmp_path, built, tiny_encoder):
    from calm_rag.embed import load_encoder
    from tests.fixtures.tiny_embedder import build_tiny_embedder

    other_seed = load_encoder(str(build_tiny_embedder(tmp_path / "s", seed=1)), device="cpu")
    with pytest.raises(IndexLoadError, match=r"manifest.json: index built with embedder .* gives other vectors"):
        load_index(built, expect_encoder=other_seed)
    other_dim = load_encoder(str(build_tiny_embedder(tmp_path / "d", hidden=16)), device="cpu")
    with pytest.raises(IndexLoadError, match=r"\(dim 32\), but the encoder is .*\(dim 16\)"):
        load_index(built, expect_encoder=other_dim)
    no_prompts = load_encoder(str(build_tiny_embedder(tmp_path / "n", prompts={})), device="cpu")
    with pytest.raises(IndexLoadError, match="index built with prompts"):
        load_index(built, expect_encoder=no_prompts)


def test_hnsw_and_ivf_builds(tmp_path, tiny_encoder):
    for factory in ("HNSW16", "IVF4,Flat"):
        out = build_index(make_docs(), tiny_encoder, tmp_path / factory.replace(",", "_"),
                          IndexConfig(factory=factory, chunk=CFG.chunk), progress=False)
        loaded = load_index(out)
        assert loaded.manifest["factory"] == factory and loaded.ntotal == len(loaded.passages)


def test_config_validation():
    with pytest.raises(ValueError, match="shard_size"):
        IndexConfig(batch_size=64, shard_size=32)
    with pytest.raises(ValueError, match="factory is empty"):
        IndexConfig(factory=" ")


# ---------------------------------------------------------------- recipes

@pytest.mark.parametrize("name", ["demo", "medical", "commonsense", "all"])
def test_packaged_recipes_load(name):
    recipe = load_recipe(name)
    assert recipe.name == name and recipe.embedder and recipe.corpora
    assert recipe.output == REPO / "indexes" / name
    assert all(Path(s.path).is_absolute() for s in recipe.corpora)


def test_recipe_errors(tmp_path):
    (tmp_path / "indexes").mkdir()
    bad = tmp_path / "indexes" / "bad.yaml"
    bad.write_text("name: bad\ncorpora: [a.jsonl]\nindx: {factory: Flat}\n")
    with pytest.raises(IndexBuildError, match=r"bad.yaml: unknown key\(s\) \['indx'\]"):
        load_recipe(bad)
    bad.write_text("name: bad\ncorpora: [a.jsonl]\nindex: {factory: Flat, batch: 3}\n")
    with pytest.raises(IndexBuildError, match="bad.yaml: .*batch"):
        load_recipe(bad)
    good = tmp_path / "indexes" / "good.yaml"
    good.write_text("corpora:\n  - data/*.jsonl\n  - {path: notes, lang: fr}\nchunk: {max_tokens: 100}\n")
    r = load_recipe(good)
    assert r.name == "good" and r.output == tmp_path / "indexes" / "good"
    # paths are relative to the recipe's folder, like every YAML file calm-rag reads
    assert r.corpora[0].path == str(tmp_path / "indexes" / "data" / "*.jsonl") and r.corpora[1].lang == "fr"
    assert r.corpora[1].path == str(tmp_path / "indexes" / "notes")
    assert r.index.chunk.max_tokens == 100
    with pytest.raises(IndexBuildError, match="no index recipe named 'nope'"):
        load_recipe("nope")


def test_demo_recipe_corpus_validates():
    from calm_rag.corpora import load_documents

    recipe = load_recipe("demo")
    if not list((REPO / "calm_rag" / "data" / "demo").glob("*.jsonl")):
        pytest.skip("calm_rag/data/demo/*.jsonl not present yet")
    docs = load_documents(recipe.corpora)
    assert {d.lang for d in docs} == {"en", "zh", "fr", "de", "it", "ja"}
