"""The CALM loop end to end on tiny models: resumable sampling, vote, pairs, DPO, evaluation."""

import json

import pytest

from calm_rag.pipeline import Run, load_run_config, sample_units
from calm_rag.records import Generation, read_jsonl


@pytest.fixture(scope="module")
def index_dir(tiny_encoder, tmp_path_factory):
    from pathlib import Path

    from calm_rag.index import build_index

    repo = Path(__file__).resolve().parent.parent
    files = [str(repo / "corpora" / "demo" / f"{lang}.jsonl") for lang in ("en", "zh", "fr")]
    return build_index(files, tiny_encoder, tmp_path_factory.mktemp("idx") / "demo", progress=False)


def _cfg(tiny_lm_dir, tiny_embedder_path, index_dir, **extra):
    sections = {
        "model": {"generator": str(tiny_lm_dir), "embedder": str(tiny_embedder_path)},
        "calm": {"languages": ("en", "zh", "fr")},
        "generate": {"n": 3, "max_new_tokens": 8, "temperature": 1.0, "seed": 1},
        "selfrag": {"top_k": 2, "retrieval": "always", "index": str(index_dir)},
        "data": {"max_train": 3, "max_eval": 2},
        "train": {"max_steps": 2, "batch_size": 1, "max_length": 256, "save_steps": 1},
        "eval": {"n": 1, "retrieval": ("always", "never")},
    }
    for k, v in extra.items():
        sections[k].update(v)
    return load_run_config(None, **sections)


def test_full_loop(tmp_path, tiny_lm_dir, tiny_embedder_path, index_dir):
    run = Run(tmp_path / "run", _cfg(tiny_lm_dir, tiny_embedder_path, index_dir))
    train_qs, eval_qs = run.questions()
    assert len(train_qs) == 9 and len(eval_qs) == 6  # 3 and 2 questions x 3 languages
    assert not {q.id for q in train_qs} & {q.id for q in eval_qs}
    gens = run.sample()
    assert len(gens) == 9 * 3
    votes = run.vote()
    assert set(votes) == {q.id for q in train_qs}
    run.pairs()
    pairs = list(read_jsonl(run.dir / "pairs.jsonl"))
    for p in pairs:
        assert set(p) >= {"prompt", "chosen", "rejected"}
        assert "<paragraph>" not in p["chosen"] and "<paragraph>" not in p["rejected"]
        assert "<paragraph>" in p["prompt"]  # passages live in the prompt
    if pairs:
        result = run.train()
        assert (result.adapter_dir / "adapter_config.json").is_file()
        reports = run.evaluate()
        assert set(reports) == {"base", "base-never", "calm", "calm-never"}
        assert (run.dir / "eval" / "plot.png").stat().st_size > 0
        assert "base" in (run.dir / "eval" / "report.md").read_text()
    manifest = json.loads((run.dir / "manifest.json").read_text())
    assert {"sample", "vote", "pairs"} <= set(manifest["stages"])
    assert manifest["versions"]["transformers"]
    # the same folder refuses a different sampling config
    with pytest.raises(ValueError, match="other generate settings"):
        Run(run.dir, _cfg(tiny_lm_dir, tiny_embedder_path, index_dir, generate={"n": 2}))


def test_interrupted_sampling_resumes_exactly(tmp_path, tiny_lm_dir, tiny_embedder_path, index_dir):
    cfg = _cfg(tiny_lm_dir, tiny_embedder_path, index_dir)
    full = Run(tmp_path / "full", cfg)
    expected = full.sample()

    cut = Run(tmp_path / "cut", cfg)
    train_qs, _ = cut.questions()
    from calm_rag.pipeline import make_selfrag

    rag = make_selfrag(cfg, cut.retriever())

    class Killed(Exception):
        pass

    def kill_after(i):
        if i == 3:
            raise Killed

    with pytest.raises(Killed):
        sample_units(rag, train_qs, cut.dir / "generations.jsonl", 3, on_unit=kill_after)
    # simulate a kill in the middle of a unit's writes: a partial unit and a torn last line
    with (cut.dir / "generations.jsonl").open("a") as fh:
        fh.write(json.dumps({"question_id": train_qs[4].id, "lang": train_qs[4].lang, "sample": 0, "text": "x",
                             "letter": None}) + "\n")
        fh.write('{"question_id": "torn')
    resumed = cut.sample()
    key = lambda g: (g.question_id, g.lang, g.sample)  # noqa: E731
    assert sorted(resumed, key=key) == sorted(expected, key=key)
    assert len(list(read_jsonl(cut.dir / "generations.jsonl", Generation))) == len(expected)
