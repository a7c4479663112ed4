"""The one-time train/dev splits (scripts/make_splits.py, splits/*.json) and the run configs that use them."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from calm_rag.config import ConfigError
from calm_rag.config_files import load_run_config
from calm_rag.pipeline import Run, load_aligned, split_questions
from tests.fixtures.scripts import load_script

REPO = Path(__file__).resolve().parent.parent


def _make_splits():
    return load_script("make_splits")


def test_split_ids_by_question():
    ms = _make_splits()
    ids = [f"set-part-{i}" for i in range(300)]
    train, dev = ms.split_ids(ids, 60, seed=0)
    assert len(dev) == 60 and len(train) == 240
    assert not set(train) & set(dev) and set(train) | set(dev) == set(ids)
    assert train == [i for i in ids if i in set(train)] and dev == [i for i in ids if i in set(dev)]  # data order
    assert dev != ids[:60] and dev != ids[-60:]  # shuffled, not the first or last block
    assert ms.split_ids(ids, 60, seed=0) == (train, dev)  # deterministic
    assert ms.split_ids(ids, 60, seed=1)[1] != dev  # the seed matters
    # a question's side depends on its id only, not on the order of the list
    assert set(ms.split_ids(list(reversed(ids)), 60, seed=0)[1]) == set(dev)
    with pytest.raises(ValueError, match="duplicate question id 'set-part-3'"):
        ms.split_ids(ids + ["set-part-3"], 60)
    with pytest.raises(ValueError, match="dev_size=301"):
        ms.split_ids(ids, 301)


def test_split_files_reproduce_and_hold_out_whole_questions(shared_dir, tmp_path):
    from calm_rag.qa import load_questions

    ms = _make_splits()
    assert ms.main(["--data", str(shared_dir / "data"), "--out", str(tmp_path)]) == 0
    for name, (folder, langs) in ms.SETS.items():
        committed = REPO / "splits" / f"{name}.json"
        assert (tmp_path / f"{name}.json").read_bytes() == committed.read_bytes(), \
            f"{committed} is stale: rerun scripts/make_splits.py"
        doc = json.loads(committed.read_text())
        assert doc["seed"] == 0 and doc["dev_size"] == 200 and doc["method"]
        assert len(doc["dev"]) == 200 and len(doc["train"]) == doc["n_questions"] - 200
        assert not set(doc["train"]) & set(doc["dev"])
        val = json.loads((REPO / "splits" / f"{name}-val.json").read_text())  # the validation slice of train
        assert (tmp_path / f"{name}-val.json").read_bytes() == (REPO / "splits" / f"{name}-val.json").read_bytes()
        assert val["dev"] == doc["train"][-50:] and val["train"] == doc["train"][:-50]
        assert not set(val["dev"]) & set(doc["dev"]) and not set(val["train"]) & set(doc["dev"])
        for lang in langs:  # the same ids, hence the same held-out questions, in every language
            ids = [q.id for q in load_questions(shared_dir / "data" / folder / f"{lang}.json", lang=lang)]
            assert set(ids) == set(doc["train"]) | set(doc["dev"]) and len(ids) == doc["n_questions"]
    assert ms.main(["--data", str(shared_dir / "data"), "--out", str(REPO / "splits"), "--check"]) == 0


RUNS = {"xcsqa-6lang": ("commonsense-lite", "xcsqa", 6), "xcsqa-distilled": ("commonsense-lite", "xcsqa", 3), "medqa": ("medical-lite", "medqa-usmle", 3),
        "medqa-mcmle": ("medical-lite", "medqa-mcmle", 3), "xcsqa-ablation-2": ("commonsense-lite", "xcsqa", 2),
        "xcsqa-ablation-3": ("commonsense-lite", "xcsqa", 3), "xcsqa-ablation-6": ("commonsense-lite", "xcsqa", 6),
        # the reproduction at the CALM issue's scale: zero-shot, no index
        "calm-xcsqa-6lang": (None, "xcsqa", 6), "calm-xcsqa-ablation-2": (None, "xcsqa", 2),
        "calm-xcsqa-ablation-3": (None, "xcsqa", 3), "calm-medqa-usmle": (None, "medqa-usmle", 3),
        "calm-xcsqa-6lang-filtered": (None, "xcsqa", 6)}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_run_configs_load(name):
    index, split, n_langs = RUNS[name]
    path = REPO / "scripts" / "runs" / f"{name}.yaml"
    cfg = load_run_config(path)
    assert len(cfg.calm.languages) == n_langs and set(cfg.data.files) == set(cfg.all_languages)
    if "xcsqa-ablation" in name or ("xcsqa-6lang" in name and "small" not in name):  # graded in all six, trained in fewer or all
        assert set(cfg.eval_languages) == {"en", "zh", "fr", "de", "it", "ja"}
    if name.startswith("calm-"):
        assert cfg.model.generator == "qwen2.5-coder-1.5b-instruct" and cfg.selfrag.retrieval == "never"
        assert cfg.eval.retrieval == ("never",) and cfg.data.max_eval == 100
        assert cfg.data.max_train >= (150 if "xcsqa" in name else 100)
        if "ablation" in name or "filtered" in name:  # the arms vote over the 6-language run's samples
            assert Path(cfg.calm.reuse) == REPO / "runs" / "calm-xcsqa-6lang"
            six = load_run_config(REPO / "scripts" / "runs" / "calm-xcsqa-6lang.yaml")
            for section in ("model", "generate", "selfrag", "data"):
                assert getattr(cfg, section) == getattr(six, section), section
        return
    if name == "xcsqa-distilled":  # the student distilled by configs/distill-xcsqa-cpu.yaml, in its languages
        assert Path(cfg.model.generator) == REPO / "runs" / "distill-xcsqa-cpu" / "model"
        assert set(cfg.eval_languages) == {"en", "zh", "fr"}
    assert Path(cfg.selfrag.index).resolve() == REPO / "indexes" / index
    assert Path(cfg.data.split).resolve() == REPO / "splits" / f"{split}.json"
    assert Path(cfg.data.split).is_file()
    for key in ("max_train:", "max_eval:", "n:", "top_k:", "max_new_tokens:", "max_steps:"):
        line = next(x for x in path.read_text().splitlines() if x.strip().startswith(key))
        assert "#" in line.split(":", 1)[1], f"{path.name}: say why {key} {line} has this scale"


def test_filtered_arm_differs_from_the_6_language_run_only_in_the_filter_and_the_steps():
    """calm-xcsqa-6lang-filtered.yaml measures one option (docs/results.md, "Filtered pairs over one epoch"): the
    6-language run's samples and settings, pairs.min_agreement 0.5 and DPO steps for one epoch of what it keeps."""
    filtered = load_run_config(REPO / "scripts" / "runs" / "calm-xcsqa-6lang-filtered.yaml")
    six = load_run_config(REPO / "scripts" / "runs" / "calm-xcsqa-6lang.yaml")
    assert six.pairs.min_agreement is None and filtered.pairs.min_agreement == 0.5
    assert replace(filtered.pairs, min_agreement=None) == six.pairs
    assert replace(filtered.calm, reuse=None) == six.calm
    assert replace(filtered.train, max_steps=six.train.max_steps) == six.train
    # 168 pairs kept of the 364 (counted from the 6-language run's votes and pairs), each seen once
    assert filtered.train.max_steps * filtered.train.batch_size * filtered.train.grad_accum == 168


def test_one_session_run_differs_from_the_full_run_only_in_scale_and_sampling_budget():
    """calm-xcsqa-6lang-small.yaml is the 6-language run cut to fit one session, made with the sampling budget the
    full recipe had then (n=3 x 64 tokens, the utility question asked); the full recipe now samples n=2 x 48 tokens
    without it (docs/results.md, "The budget"). Every other setting that makes samples or trains is the same."""
    small = load_run_config(REPO / "scripts" / "runs" / "calm-xcsqa-6lang-small.yaml")
    six = load_run_config(REPO / "scripts" / "runs" / "calm-xcsqa-6lang.yaml")
    for section in ("model", "calm", "eval"):
        assert getattr(small, section) == getattr(six, section), section
    assert (small.generate.n, small.generate.max_new_tokens, small.selfrag.critique_zero_shot) == (3, 64, True)
    assert (six.generate.n, six.generate.max_new_tokens, six.selfrag.critique_zero_shot) == (2, 48, False)
    budget = {"n": 1, "max_new_tokens": 1}
    assert replace(small.generate, **budget) == replace(six.generate, **budget)
    assert replace(small.selfrag, critique_zero_shot=True) == replace(six.selfrag, critique_zero_shot=True)
    assert small.data.files == six.data.files and small.data.split == six.data.split
    assert (small.data.max_train, small.data.max_eval) == (30, 50) and six.data.max_train > 30
    assert (small.generate.units_per_batch, len(small.calm.languages)) == (6, 6)  # one question a batch in both
    for field in ("beta", "learning_rate", "lora_targets", "lora_r", "lora_alpha", "max_length"):
        assert getattr(small.train, field) == getattr(six.train, field), field


@pytest.mark.parametrize("name", ["xcsqa-ablation-2", "medqa-mcmle"])
def test_run_configs_split_real_data(shared_dir, tmp_path, name):
    cfg = load_run_config(REPO / "scripts" / "runs" / f"{name}.yaml")
    doc = json.loads(Path(cfg.data.split).read_text())
    aligned = load_aligned(cfg)
    train, dev = split_questions(cfg, aligned)
    assert [aligned.ids[i] for i in train] == doc["train"][:cfg.data.max_train]
    assert [aligned.ids[i] for i in dev] == doc["dev"][:cfg.data.max_eval]
    train_qs, eval_qs = Run(tmp_path / "run", cfg).questions()
    assert {q.id for q in eval_qs} <= set(doc["dev"]) and {q.id for q in train_qs} <= set(doc["train"])
    assert {q.lang for q in eval_qs} == set(cfg.eval_languages) and {q.lang for q in train_qs} == set(cfg.calm.languages)


def _demo_split_cfg(tmp_path, train, dev, **data):
    from calm_rag.config import demo_files

    files = {lang: p for lang, p in demo_files().items() if lang in ("en", "zh", "fr")}
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": train, "dev": dev}))
    yaml = tmp_path / "run.yaml"
    yaml.write_text(json.dumps({"calm": {"languages": ["en", "zh", "fr"]},
                                "data": {"files": files, "split": "split.json", **data}}))
    return load_run_config(yaml), split


def test_split_file_decides_train_and_eval(tmp_path):
    ids = [f"data-demo_questions-{i}" for i in range(8)]
    cfg, split = _demo_split_cfg(tmp_path, train=[ids[5], ids[1], ids[2]], dev=[ids[7], ids[0]])
    assert cfg.data.split == str(split)  # relative to the YAML file
    train_qs, eval_qs = Run(tmp_path / "run", cfg).questions()
    assert [q.id for q in train_qs if q.lang == "en"] == [ids[1], ids[2], ids[5]]  # data order
    assert [q.id for q in eval_qs if q.lang == "zh"] == [ids[0], ids[7]]
    assert {q.lang for q in train_qs} == {"en", "zh", "fr"} and len(train_qs) == 9
    # max_train / max_eval still cut, from the split's lists
    cfg, _ = _demo_split_cfg(tmp_path, train=[ids[5], ids[1], ids[2]], dev=[ids[7], ids[0]], max_train=1)
    train, dev = split_questions(cfg, load_aligned(cfg))
    assert train == [1] and dev == [0, 7]


def test_split_file_errors_name_the_file(tmp_path):
    ids = [f"data-demo_questions-{i}" for i in range(3)]
    cfg, split = _demo_split_cfg(tmp_path, train=ids[:2] + ["xcsqa-train-5"], dev=ids[2:])
    with pytest.raises(ConfigError, match=r"split\.json: 1 question id\(s\) of the split are missing.*xcsqa-train-5"):
        split_questions(cfg, load_aligned(cfg))
    cfg, _ = _demo_split_cfg(tmp_path, train=ids[:2], dev=ids[1:])
    with pytest.raises(ConfigError, match=r"split\.json: 1 id\(s\) are in both train and dev"):
        split_questions(cfg, load_aligned(cfg))
    split.write_text('{"train": "all"}')
    with pytest.raises(ConfigError, match=r"split\.json: 'train' must be a list"):
        split_questions(cfg, load_aligned(cfg))
    split.unlink()
    with pytest.raises(ConfigError, match=r"data\.split=.*split\.json: no such file.*make_splits"):
        split_questions(cfg, load_aligned(cfg))


def test_no_split_file_keeps_the_position_split(tmp_path):
    cfg = load_run_config(None, calm={"languages": ("en", "zh")}, data={"max_train": 2, "max_eval": 2})
    assert cfg.data.split is None
    aligned = load_aligned(cfg)
    assert aligned.ids[0] == "q-0"
    from calm_rag.qa import split_train_dev

    train, dev = split_train_dev(len(aligned), cfg.data.eval_fraction, cfg.data.split_seed)
    assert split_questions(cfg, aligned) == (train[:2], dev[:2])


def test_run_config_model_folder_is_relative_to_the_file(tmp_path, monkeypatch):
    (tmp_path / "models" / "student").mkdir(parents=True)
    (tmp_path / "runs").mkdir()
    path = tmp_path / "runs" / "r.yaml"
    path.write_text("model:\n  generator: ../models/student\n  adapter: ../no-such-adapter\n")
    monkeypatch.chdir(REPO)  # the working directory does not matter for paths written in the file
    cfg = load_run_config(path)
    assert Path(cfg.model.generator) == tmp_path / "models" / "student"
    assert Path(cfg.model.adapter) == tmp_path / "no-such-adapter"  # a path all the same: the load error names it
    named = tmp_path / "runs" / "named.yaml"
    named.write_text("model:\n  generator: qwen2.5-coder-0.5b-instruct\n")
    assert load_run_config(named).model.generator == "qwen2.5-coder-0.5b-instruct"
    # a command-line value is relative to the working directory, not to the file
    assert load_run_config(path, model={"generator": "elsewhere"}).model.generator == "elsewhere"
