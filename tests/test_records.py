import pytest

from calm_rag.records import (Critique, Generation, JsonlAppender, RecordError, read_jsonl, write_jsonl)


def _gen(i: int) -> Generation:
    return Generation(question_id=f"q{i}", lang="zh", sample=0, text=f"答案：{'ABC'[i % 3]}", letter="ABC"[i % 3],
                      critique=Critique(p_retrieve=0.7, rel=0.9, sup=0.5, use=0.25, score=1.5), passage_ids=("d#0",))


def test_roundtrip(tmp_path):
    path = tmp_path / "g.jsonl"
    assert write_jsonl(path, [_gen(i) for i in range(3)]) == 3
    back = list(read_jsonl(path, Generation))
    assert back == [_gen(i) for i in range(3)]
    assert "答案" in path.read_text(encoding="utf-8")  # not ascii-escaped


def test_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text('{"a": 1}\nnot json\n')
    with pytest.raises(RecordError, match=r"g\.jsonl:2"):
        list(read_jsonl(path))


def test_unknown_field_named(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text('{"question_id": "q", "lang": "en", "sample": 0, "text": "t", "letter": null, "bogus": 1}\n')
    with pytest.raises(RecordError, match="bogus"):
        list(read_jsonl(path, Generation))


def test_interrupted_append_is_repaired(tmp_path):
    path = tmp_path / "g.jsonl"
    with JsonlAppender(path) as app:
        app.append(_gen(0))
    with path.open("a") as fh:
        fh.write('{"question_id": "q1", "la')  # killed mid-write
    assert [g.question_id for g in read_jsonl(path, Generation)] == ["q0"]
    with JsonlAppender(path) as app:
        app.append(_gen(1))
    assert [g.question_id for g in read_jsonl(path, Generation)] == ["q0", "q1"]


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "g.jsonl"
    write_jsonl(path, [_gen(0)])

    def boom():
        yield _gen(1)
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_jsonl(path, boom())
    assert [g.question_id for g in read_jsonl(path, Generation)] == ["q0"]
    assert [p.name for p in tmp_path.iterdir()] == ["g.jsonl"]


def test_atomic_files_get_umask_permissions_not_0600(tmp_path):
    import os
    import stat

    from calm_rag.records import atomic_file, atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "report.md", "x\n")
        with atomic_file(tmp_path / "plot.png", "wb") as fh:
            fh.write(b"\x89PNG")
    finally:
        os.umask(old)
    for name in ("report.md", "plot.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    assert (tmp_path / "plot.png").read_bytes() == b"\x89PNG"
