"""Corpus loading, validation errors (file:line + fix) and per-language chunking."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from calm_rag.config import ChunkConfig
from calm_rag.corpora import (CorpusError, CorpusSource, chunk_documents, iter_documents, load_documents,
                              passage_embed_text)
from calm_rag.records import Document

REPO = Path(__file__).resolve().parent.parent
SHARED_CORPORA = REPO.parent / "shared" / "corpora"


def doc(i, lang="en", contents=None, **kw):
    return {"id": f"d{i}", "title": f"title {i}", "contents": contents or f"text number {i}", "lang": lang,
            "source": "test", **kw}


def write_jsonl(path: Path, rows, gz=False):
    data = "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


def test_jsonl_and_gz(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [doc(1), doc(2, "zh", "狗是动物。")])
    b = write_jsonl(tmp_path / "b.jsonl.gz", [doc(3, "fr")], gz=True)
    docs = load_documents([a, b])
    assert [d.id for d in docs] == ["d1", "d2", "d3"]
    assert docs[1] == Document("d2", "title 2", "狗是动物。", "zh", "test")
    assert load_documents([str(tmp_path / "*.jsonl*")]) == docs  # globs expand, sorted


@pytest.mark.parametrize("line, expect", [
    ("{not json", "not valid JSON"),
    (json.dumps({"id": "x", "title": "t", "contents": "c", "lang": "en"}), "missing field(s) ['source']"),
    (json.dumps(doc(9, contents=" ")), "field 'contents' is empty"),
    (json.dumps(doc(9, lang="xx")), "unknown language code 'xx'"),
    (json.dumps([1, 2]), "expected a JSON object"),
])
def test_bad_lines_name_file_and_line(tmp_path, line, expect):
    path = write_jsonl(tmp_path / "bad.jsonl", [doc(1), doc(2), line])
    with pytest.raises(CorpusError) as err:
        load_documents([path])
    msg = str(err.value)
    assert f"{path}:3" in msg and expect in msg
    assert "\n" not in msg


def test_undecodable_bytes(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(doc(1)).encode() + b"\n" + '{"id": "é"}'.encode("latin-1") + b"\n")
    with pytest.raises(CorpusError, match=r"latin1.jsonl:2: .*not UTF-8.*re-save"):
        load_documents([path])


def test_duplicate_ids_across_files(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [doc(1), doc(2)])
    b = write_jsonl(tmp_path / "b.jsonl", [doc(3), doc(2)])
    with pytest.raises(CorpusError, match=r"b.jsonl.*duplicate id 'd2', first seen in .*a.jsonl"):
        load_documents([a, b])


def test_truncated_gzip(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl.gz", [doc(i, contents="x" * 2000 + str(i)) for i in range(50)], gz=True)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(CorpusError, match=r"t.jsonl.gz: gzip data is truncated"):
        load_documents([path])


def test_missing_file_and_empty_glob(tmp_path):
    with pytest.raises(CorpusError, match="no such corpus file"):
        load_documents([tmp_path / "nope.jsonl"])
    with pytest.raises(CorpusError, match="no file matches"):
        load_documents([str(tmp_path / "*.jsonl")])


def test_text_folder(tmp_path):
    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("Heart\nThe heart pumps blood.\n", encoding="utf-8")
    (folder / "sub" / "b.md").write_text("心脏\n心脏泵血。", encoding="utf-8")
    docs = load_documents([CorpusSource(str(folder), lang="en")])
    assert [(d.id, d.title, d.lang, d.source) for d in docs] == [
        ("notes-a", "Heart", "en", "notes"), ("notes-sub/b", "心脏", "en", "notes")]
    assert docs[0].contents == "Heart\nThe heart pumps blood."
    with pytest.raises(CorpusError, match="needs its language"):
        load_documents([CorpusSource(str(folder))])
    (folder / "bad.txt").write_bytes(b"ok\n\xff\xfe")
    with pytest.raises(CorpusError, match=r"bad.txt:2: .*not UTF-8"):
        load_documents([CorpusSource(str(folder), lang="en")])


def test_csv_and_parquet_with_column_mapping(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"doc_id": ["a", "b"], "text": ["the heart", "狗"], "language": ["en", "zh"]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    cols = {"id": "doc_id", "contents": "text", "lang": "language"}
    for name in ("t.csv", "t.parquet"):
        docs = load_documents([CorpusSource(str(tmp_path / name), columns=cols, source="tab")])
        assert [(d.id, d.title, d.contents, d.lang, d.source) for d in docs] == [
            ("a", "a", "the heart", "en", "tab"), ("b", "b", "狗", "zh", "tab")]
    with pytest.raises(CorpusError, match=r"t.csv row 1: no column 'contents'"):
        load_documents([CorpusSource(str(tmp_path / "t.csv"), lang="en")])


def test_hf_dataset():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([{"id": "x1", "title": "T", "contents": "hello", "lang": "de", "source": "s"}])
    assert load_documents([ds]) == [Document("x1", "T", "hello", "de", "s")]


def test_documents_are_validated_too():
    bad = Document("a", "t", "c", "klingon", "s")
    with pytest.raises(CorpusError, match="unknown language code 'klingon'"):
        list(iter_documents([bad]))


def test_chunks_fit_overlap_and_keep_metadata(tiny_encoder):
    sentences = [f"Sentence {i} says the heart pumps blood to organ {i}." for i in range(40)]
    d = Document("long", "Heart", " ".join(sentences), "en", "src")
    n = tiny_encoder.count_tokens(sentences[12])  # tokens of a sentence with a two-digit number
    cfg = ChunkConfig(max_tokens=2 * n + 4, overlap_tokens=n + 2)  # 2 sentences per chunk, 1 shared
    chunks = list(chunk_documents([d, Document("short", "S", "tiny text", "en", "src")], tiny_encoder, cfg))
    long = [c for c in chunks if c.doc_id == "long"]
    assert len(long) > 3
    assert [c.id for c in long] == [f"long#{i}" for i in range(len(long))]
    assert all(c.title == "Heart" and c.lang == "en" and c.source == "src" for c in long)
    assert all(tiny_encoder.count_tokens(c.text) <= cfg.max_tokens + 2 for c in long)
    # sentence-aware: chunks end at a sentence end, and consecutive chunks overlap
    assert sum(c.text.endswith(".") for c in long) >= len(long) - 1
    assert all(long[i].text.split(". ")[-1] in long[i + 1].text for i in range(len(long) - 1))
    # every sentence survives chunking
    joined = " ".join(c.text for c in long)
    assert all(s in joined for s in sentences)
    assert [c.id for c in chunks if c.doc_id == "short"] == ["short#0"]
    assert passage_embed_text(long[1], cfg) == "Heart\n" + long[1].text


def test_cjk_splits_at_sentence_punctuation(tiny_encoder):
    text = "".join(f"心脏第{i}次把血液泵到全身。" for i in range(30))
    d = Document("zh1", "心脏", text, "zh", "src")
    chunks = list(chunk_documents([d], tiny_encoder, ChunkConfig(max_tokens=40, overlap_tokens=0)))
    assert len(chunks) > 3
    assert all(c.text.endswith("。") for c in chunks)
    assert "".join(c.text for c in chunks) == text


def test_chunk_config_validation():
    with pytest.raises(ValueError, match="overlap_tokens"):
        ChunkConfig(max_tokens=50, overlap_tokens=50)
    with pytest.raises(ValueError, match="unknown language code"):
        ChunkConfig(cjk_langs=("zz",))


def test_real_corpora_heads_validate():
    if not SHARED_CORPORA.is_dir():
        pytest.skip(f"{SHARED_CORPORA} not found: this test reads the shared corpora")
    files = sorted(SHARED_CORPORA.glob("*.jsonl.gz"))
    docs = load_documents([CorpusSource(str(f), limit=50) for f in files])
    assert len(docs) == 50 * len(files)
    assert {d.lang for d in docs} == {"en", "zh", "fr", "de", "it", "ja"}
