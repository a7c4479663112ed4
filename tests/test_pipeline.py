"""The CALM loop end to end on tiny models: resumable sampling, vote, pairs, DPO, evaluation."""

import json

import pytest

from calm_rag.config_files import load_run_config
from calm_rag.pipeline import Run
from calm_rag.sampling import sample_units
from calm_rag.records import Generation, read_jsonl


@pytest.fixture(scope="module")
def index_dir(tiny_encoder, tmp_path_factory):
    from pathlib import Path

    from calm_rag.index import build_index

    repo = Path(__file__).resolve().parent.parent
    files = [str(repo / "calm_rag" / "data" / "demo" / f"{lang}.jsonl") for lang in ("en", "zh", "fr")]
    return build_index(files, tiny_encoder, tmp_path_factory.mktemp("idx") / "demo", progress=False)


def _cfg(tiny_lm_dir, tiny_embedder_path, index_dir, **extra):
    sections = {
        "model": {"generator": str(tiny_lm_dir), "embedder": str(tiny_embedder_path)},
        "calm": {"languages": ("en", "zh", "fr")},
        "generate": {"n": 3, "max_new_tokens": 8, "temperature": 1.0, "seed": 1, "units_per_batch": 3},
        "selfrag": {"top_k": 2, "retrieval": "always", "index": str(index_dir)},
        "data": {"max_train": 3, "max_eval": 2},
        "train": {"max_steps": 2, "batch_size": 1, "max_length": 384, "save_steps": 1},
        "eval": {"n": 1, "retrieval": ("always", "never")},
    }
    for k, v in extra.items():
        sections.setdefault(k, {}).update(v)
    return load_run_config(None, **sections)


def test_full_loop(tmp_path, tiny_lm_dir, tiny_embedder_path, index_dir, tiny_model_translations):
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
    texts = {(g.question_id, g.lang, g.text) for g in gens}
    for p in pairs:
        assert set(p) >= {"prompt", "chosen", "rejected", "chosen_source"}
        assert (p["question_id"], p["lang"], p["rejected"]) in texts  # on-policy: a sampled completion as is
        assert p["chosen_source"] == "translation" or (p["question_id"], p["lang"], p["chosen"]) in texts
        assert "<paragraph>" in p["prompt"]  # passages live in the prompt
    assert pairs  # the tiny model's samples disagree somewhere (fixed seeds, fixed fixtures)
    record = json.loads((run.dir / "manifest.json").read_text())["stages"]["pairs"]
    signal = record["signal"]
    assert (signal["questions"], signal["with_gold"], signal["vote"]) == (3, 3, "majority")
    assert signal["vote_right"] == sum(votes[q].winner == g for q, g in {(q.id, q.gold) for q in train_qs})
    assert set(signal["sample_accuracy"]) == {"en", "zh", "fr"} and signal["chance"] == pytest.approx(0.2)
    assert sum(b["questions"] for b in signal["winner_share"]["bins"].values()) == 3 - signal["no_winner"]
    assert record["min_agreement"] is None and record["questions_kept"] == 3 - signal["no_winner"]
    assert record["translated"] == sum(p["chosen_source"] == "translation" for p in pairs)
    counts = json.loads((run.dir / "pairs_counts.json").read_text())
    assert record["translations_dropped"] == sum(c["translation_rejected"] for c in counts.values())
    # `calm run` resumed after the pairs votes again and keeps the pairs it has (no new translations, no new file)
    made = (run.dir / "pairs.jsonl").stat()

    def no_translation(*args):
        raise AssertionError("translated again")

    run.vote()
    assert run.pairs(translate=no_translation) == json.loads((run.dir / "pairs_counts.json").read_text())
    kept = (run.dir / "pairs.jsonl").stat()
    assert (kept.st_ino, kept.st_mtime_ns) == (made.st_ino, made.st_mtime_ns)
    del run.manifest["stages"]["pairs"]["inputs"]  # pairs an older calm-rag made: made again
    run.pairs()
    assert (run.dir / "pairs.jsonl").stat().st_ino != made.st_ino
    assert run.manifest["stages"]["pairs"]["inputs"] == record["inputs"]
    # the same signal read while sampling runs: only questions sampled in every language, nothing written
    from calm_rag.pipeline import signal_so_far

    so_far = signal_so_far(run.dir)
    assert (so_far["complete"], so_far["of"]) == (3, 3)
    assert {k: v for k, v in so_far.items() if k not in ("complete", "of")} == signal
    lines = (run.dir / "generations.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    before = {p.name: p.read_bytes() for p in run.dir.iterdir() if p.is_file()}
    (run.dir / "generations.jsonl").write_text("".join(lines[:-1]), encoding="utf-8")  # a unit still being sampled
    partial = signal_so_far(run.dir)
    assert (partial["complete"], partial["with_gold"]) == (2, 2)
    assert {p.name for p in run.dir.iterdir() if p.is_file()} == set(before)
    (run.dir / "generations.jsonl").write_text("".join(lines), encoding="utf-8")
    assert sum(record["per_lang"].values()) == record["pairs"] == len(pairs)
    # the weighted vote is selectable in the same folder; pairs refuse a vote made the other way
    weighted = Run(run.dir, _cfg(tiny_lm_dir, tiny_embedder_path, index_dir, calm={"vote": "weighted"},
                                 pairs={"min_agreement": 1.0}))
    with pytest.raises(ValueError, match=r"calm pairs: .*votes\.jsonl holds the calm\.vote=majority vote.*"
                                         r"calm-rag calm vote --run .* --vote weighted"):
        weighted.pairs()
    weighted.vote()
    weighted.pairs()
    record = weighted.manifest["stages"]["pairs"]
    assert record["signal"]["vote"] == "weighted" and record["min_agreement"] == 1.0
    assert record["questions_kept"] == record["signal"]["min_agreement"]["questions"]
    # the read-only signal shows the same for another vote and threshold before any pairs are made
    other = signal_so_far(run.dir, "weighted", 1.0)
    assert {k: v for k, v in other.items() if k not in ("complete", "of")} == record["signal"]
    with pytest.raises(ValueError, match="vote='mean'; use majority or weighted"):
        signal_so_far(run.dir, "mean")
    assert record["questions_kept"] + record["below_agreement"] + record["no_winner"] == 3
    kept = {p["question_id"] for p in read_jsonl(run.dir / "pairs.jsonl")}
    assert len(kept) <= record["questions_kept"]
    Run(run.dir, _cfg(tiny_lm_dir, tiny_embedder_path, index_dir)).vote()  # back to the paper's vote
    run.pairs()
    assert list(read_jsonl(run.dir / "pairs.jsonl")) == pairs
    result = run.train()
    assert (result.adapter_dir / "adapter_config.json").is_file()
    reports = run.evaluate()
    assert set(reports) == {"base-always", "base-never", "calm-always", "calm-never"}
    assert (run.dir / "eval" / "plot.png").stat().st_size > 0
    assert "base" in (run.dir / "eval" / "report.md").read_text()
    _check_results_report(run.dir, tmp_path / "results")
    manifest = json.loads((run.dir / "manifest.json").read_text())
    assert {"sample", "vote", "pairs"} <= set(manifest["stages"])
    assert manifest["versions"]["transformers"]
    # the same folder refuses a different sampling config
    with pytest.raises(ValueError, match="other generate settings"):
        Run(run.dir, _cfg(tiny_lm_dir, tiny_embedder_path, index_dir, generate={"n": 2}))
    with pytest.raises(ValueError, match="other generate settings"):  # batches decide the samples too
        Run(run.dir, _cfg(tiny_lm_dir, tiny_embedder_path, index_dir, generate={"units_per_batch": 1}))


def test_eval_languages_beyond_the_training_languages(tmp_path, tiny_lm_dir, tiny_embedder_path, index_dir):
    """The paper's ablation: train on en+zh, evaluate on en, zh and fr, on the same questions."""
    from calm_rag.config import ConfigError
    from calm_rag.config import demo_files

    cfg = _cfg(tiny_lm_dir, tiny_embedder_path, index_dir, calm={"languages": ("en", "zh")},
               generate={"max_new_tokens": 4}, eval={"languages": ("en", "zh", "fr"), "retrieval": ("never",)})
    run = Run(tmp_path / "run", cfg)
    train_qs, eval_qs = run.questions()
    assert {q.lang for q in train_qs} == {"en", "zh"} and len(train_qs) == 3 * 2
    assert [q.lang for q in eval_qs] == ["en", "zh", "fr"] * 2
    assert {q.id for q in eval_qs} == {q.id for q in Run(tmp_path / "all3", _cfg(
        tiny_lm_dir, tiny_embedder_path, index_dir)).questions()[1]}  # the eval questions of a 3-language run
    report = run.evaluate(which=("base",))["base-never"]
    assert report.langs == ["en", "zh", "fr"] and report.n_samples == 6
    # a later evaluation in another retrieval mode adds its report; the earlier one stays listed and tabled
    again = Run(run.dir, _cfg(tiny_lm_dir, tiny_embedder_path, index_dir, calm={"languages": ("en", "zh")},
                              generate={"max_new_tokens": 4},
                              eval={"languages": ("en", "zh", "fr"), "retrieval": ("always",)}))
    assert list(again.evaluate(which=("base",))) == ["base-never", "base-always"]
    assert json.loads((run.dir / "manifest.json").read_text())["stages"]["eval"]["runs"] == ["base-never", "base-always"]
    assert "base-never" in (run.dir / "eval" / "report.md").read_text()
    with pytest.raises(ConfigError, match=r"eval\.languages=\['en', 'zh', 'fr'\], not \['en', 'zh'\]"):
        Run(run.dir, _cfg(tiny_lm_dir, tiny_embedder_path, index_dir, calm={"languages": ("en", "zh")},
                          generate={"max_new_tokens": 4}, eval={"languages": ("en", "zh")}))
    with pytest.raises(ConfigError, match=r"data\.files has no file for language\(s\) \['de'\]"):
        files = {lang: path for lang, path in demo_files().items() if lang in ("en", "zh")}
        Run(tmp_path / "de", _cfg(tiny_lm_dir, tiny_embedder_path, index_dir, calm={"languages": ("en", "zh")},
                                  data={"files": files}, eval={"languages": ("en", "de")})).questions()
    with pytest.raises(ConfigError, match=r"eval\.languages repeats a language: \('en', 'en'\)"):
        _cfg(tiny_lm_dir, tiny_embedder_path, index_dir, eval={"languages": ("en", "en")})


def test_an_ablation_arm_reuses_the_samples_and_the_base_evaluation(tmp_path, tiny_lm_dir, tiny_embedder_path,
                                                                     index_dir, monkeypatch):
    """The paper's language ablation: the 2-language arm votes over its languages' share of the 3-language run's
    samples and shares its base evaluation; nothing is generated again, and a run made another way is refused."""
    from calm_rag.config import ConfigError
    from calm_rag.rag import SelfRag

    same = {"generate": {"max_new_tokens": 4}}
    full = Run(tmp_path / "full", _cfg(tiny_lm_dir, tiny_embedder_path, index_dir, eval={"retrieval": ("never",)},
                                       **same))
    full.sample()
    full.evaluate(which=("base",))

    def arm(folder, **extra):
        sections = {"calm": {"languages": ("en", "zh"), "reuse": str(full.dir)},
                    "eval": {"languages": ("en", "zh", "fr"), "retrieval": ("never",)}, **same}
        for key, value in extra.items():
            sections[key] = {**sections.get(key, {}), **value}
        return Run(tmp_path / folder, _cfg(tiny_lm_dir, tiny_embedder_path, index_dir, **sections))

    def lines(path, langs):
        return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()
                if json.loads(x)["lang"] in langs]

    monkeypatch.setattr(SelfRag, "answer_many", lambda *a, **k: pytest.fail("generated again instead of reusing"))
    two = arm("two")
    two.sample()
    assert lines(two.dir / "generations.jsonl", ("en", "zh", "fr")) == lines(full.dir / "generations.jsonl", ("en", "zh"))
    votes = two.vote()
    assert len(votes) == 3
    two.evaluate(which=("base",))
    name = "eval/base-never.generations.jsonl"
    assert lines(two.dir / name, ("en", "zh", "fr")) == lines(full.dir / name, ("en", "zh", "fr"))
    assert json.loads((two.dir / "eval" / "base-never.json").read_text())["accuracy"] == \
        json.loads((full.dir / "eval" / "base-never.json").read_text())["accuracy"]
    # samples made another way, or not finished, are not taken
    with pytest.raises(ConfigError, match=r"calm\.reuse=.*full: its generate settings differ from this run's"):
        arm("other", generate={"temperature": 0.5}).sample()
    kept = (full.dir / "generations.jsonl").read_text(encoding="utf-8").splitlines()
    last_zh = max(i for i, x in enumerate(kept) if json.loads(x)["lang"] == "zh")
    (full.dir / "generations.jsonl").write_text("\n".join(kept[:last_zh] + kept[last_zh + 1:]) + "\n",
                                                encoding="utf-8")
    with pytest.raises(ConfigError, match=r"generations\.jsonl lacks 1 of this run's 6 sample unit\(s\).*finish "
                                          r"that stage there first"):
        arm("short").sample()
    with pytest.raises(ConfigError, match=r"calm\.reuse=.*nowhere: not a run folder"):
        arm("lost", calm={"reuse": str(tmp_path / "nowhere")}).sample()


def _check_results_report(run_dir, out):
    """scripts/results_report.py on a finished run: tables, bootstrap deltas, plot and metrics JSON."""
    from calm_rag import report as module
    text = module.run_section(run_dir, out, n_boot=50, seed=0)
    metrics = json.loads((out / f"{run_dir.name}.json").read_text())
    assert set(metrics["deltas"]) == {"calm-always vs base-always", "calm-never vs base-never",
                                      "calm-always vs calm-never", "base-always vs base-never"}
    for d in metrics["deltas"].values():
        change, lo, hi = d["metrics"]["vote_accuracy"]
        assert lo <= change <= hi  # the observed change lies in its own bootstrap interval
    base, calm = metrics["reports"]["base-always"], metrics["reports"]["calm-always"]
    change = metrics["deltas"]["calm-always vs base-always"]["metrics"]["accuracy:en"][0]
    assert change == pytest.approx(calm["accuracy"]["en"] - base["accuracy"]["en"])
    assert "| calm-never |" in text and "95% CI" in text and metrics["bootstrap"] == {"n_boot": 50, "seed": 0}
    assert (out / f"{run_dir.name}.png").stat().st_size > 0 and (out / f"{run_dir.name}.md").read_text() == text
    # the ablation table: pooled accuracy over the trained languages, with the stored interval
    d, lo, hi = metrics["deltas"]["calm-always vs base-always"]["metrics"]["accuracy:en+zh+fr"]
    assert d == pytest.approx(sum(calm["accuracy"][x] - base["accuracy"][x] for x in ("en", "zh", "fr")) / 3)
    signal = metrics["training_signal"]
    assert (signal["votes"], signal["samples"]) == (3, 27)  # 3 questions; x 3 languages x n=3
    gold_train = {json.loads(line)["id"]: json.loads(line)["gold"]
                  for line in (run_dir / "questions.jsonl").read_text().splitlines()}
    votes = [json.loads(line) for line in (run_dir / "votes.jsonl").read_text().splitlines()]
    assert signal["votes_right"] == sum(v["winner"] == gold_train[v["question_id"]] for v in votes)
    # how far CALM moved the base's answers, counted here from the generation files
    def graded(name):
        return {(g["question_id"], g["lang"], g["sample"]): g for g in
                map(json.loads, (run_dir / "eval" / f"{name}.generations.jsonl").read_text().splitlines())}

    before, after = graded("base-never"), graded("calm-never")
    moved = metrics["changes"]["calm-never vs base-never"]
    assert moved["units"] == len(before) == 6 and moved["changed"] == sum(
        before[k]["letter"] != after[k]["letter"] for k in before)
    assert moved["wrong_to_right"] == sum(before[k]["letter"] != metrics["gold"][k[0]] == after[k]["letter"]
                                          for k in before)
    assert moved["chars_after"] == pytest.approx(sum(len(g["text"]) for g in after.values()) / 6)
    assert f"Answers that changed letter: {moved['changed']} of 6 units" in text
    # the stored letters reproduce the stored report
    from calm_rag.evaluate import evaluate_generations
    from calm_rag.records import Generation

    again = evaluate_generations([Generation(q, lang, k, "", letter) for q, lang, k, letter
                                  in metrics["answers"]["calm-never"]], metrics["gold"], langs=["en", "zh", "fr"])
    assert again.to_dict()["accuracy"] == metrics["reports"]["calm-never"]["accuracy"]
    assert again.consistency == metrics["reports"]["calm-never"]["consistency"]
    row = module.ablation_table(module.ablation_arms([out / f"{run_dir.name}.json"])).splitlines()[2]
    assert row.startswith(f"| {run_dir.name} | en, zh, fr | {signal['votes_right']}/3 | "
                          f"{metrics['stages']['pairs']['pairs']} | "
                          f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | – |")
    # trained in en only, written before the pooled metrics existed: plain differences, no interval
    old = json.loads(json.dumps(metrics))
    old["config"]["calm"]["languages"] = ["en"]
    old["deltas"]["calm-always vs base-always"]["metrics"].pop("accuracy:en+zh+fr")
    (out / "old.json").write_text(json.dumps(old))
    held_out = sum(calm["accuracy"][x] - base["accuracy"][x] for x in ("zh", "fr")) / 2
    assert f"| {100 * held_out:+.1f} (no CI) |" in module.ablation_table(module.ablation_arms([out / "old.json"]))
    module.ablation_plot(module.ablation_arms([out / f"{run_dir.name}.json", out / "old.json"]), out / "ablation.png")
    assert (out / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    _check_restored_report(run_dir, out.parent / "restored", metrics)


def _check_restored_report(run_dir, tmp, full):
    """A folder restored from its manifest, its evaluation and its shipped adapter (the samples, votes and
    pairs are gone, and DPO stopped before its train stage was recorded) still gets its report: the training
    signal from the manifest, the steps from the adapter's sidecar."""
    import shutil

    from calm_rag import report as module

    folder = tmp / run_dir.name
    shutil.copytree(run_dir / "eval", folder / "eval")
    shutil.copytree(run_dir / "train" / "adapter", folder / "train" / "adapter")
    for name in ("questions.jsonl", "split.json"):
        shutil.copy(run_dir / name, folder / name)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    del manifest["stages"]["train"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    sidecar = folder / "train" / "adapter" / "calm_rag_adapter.json"
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "steps": 7}))
    text = module.run_section(folder, tmp / "out", n_boot=50, seed=0)
    signal = json.loads((tmp / "out" / f"{run_dir.name}.json").read_text())["training_signal"]
    assert signal["source"] == "manifest" and signal["samples_right"] is None
    for key in ("votes", "votes_right", "vote_ties", "samples", "sample_accuracy"):
        assert signal[key] == full["training_signal"][key], key
    assert f"7 DPO steps (the checkpoint of a {manifest['config']['train']['max_steps']}-step schedule" in text
    assert f"for {signal['votes_right']} of 3 training questions" in text
    manifest["stages"]["pairs"].pop("signal")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit, match=r"no votes\.jsonl/generations\.jsonl and no training signal recorded"):
        module.run_section(folder, tmp / "out", n_boot=50, seed=0)


@pytest.mark.parametrize("backend", ["llama.cpp", "transformers"])
def test_interrupted_sampling_resumes_exactly(tmp_path, tiny_lm_dir, tiny_embedder_path, index_dir, backend):
    """Units are sampled in batches of 2: the kill comes after the 2nd batch, and a torn 3rd batch
    (one record of unit 4 of 9, then half a line) is dropped and redone on restart; on both backends."""
    if backend == "llama.cpp":
        pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make venv builds it)")
    cfg = _cfg(tiny_lm_dir, tiny_embedder_path, index_dir, generate={"units_per_batch": 2},
               model={"generator": str(tiny_lm_dir), "embedder": str(tiny_embedder_path), "backend": backend,
                      "precision": "f32"})
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


# ---------------------------------------------------------------- evaluating QA files (calm eval --data)

QA = __import__("pathlib").Path(__file__).resolve().parent / "data" / "qa"


def test_load_eval_questions_formats_languages_and_alignment(tmp_path):
    from calm_rag.config import ConfigError
    from calm_rag.eval_files import load_eval_questions

    # X-CSR JSONL: languages from the rows, ids from the file, shared across languages
    a = load_eval_questions([QA / "xcsr_dev.jsonl"])
    assert a.langs == ["en", "zh"] and a.ids == ["xcsqa-dev-a1", "xcsqa-dev-b2", "xcsqa-dev-c3"]
    assert [q.gold for q in a.by_lang["zh"]] == ["A", "C", "B"]
    zh = load_eval_questions([QA / "xcsr_dev.jsonl"], langs=["zh"], max_questions=2)
    assert zh.langs == ["zh"] and zh.by_lang["zh"][1].stem == "病人去哪里治病？"
    # MedQA JSONL: languages from the file names; --langs orders them
    a = load_eval_questions([QA / "medqa" / "en.jsonl", QA / "medqa" / "fr.jsonl"], langs=["fr", "en"])
    assert a.langs == ["fr", "en"] and a.ids == ["qa-medqa-0", "qa-medqa-1"]
    # files whose names carry no language take --langs by position; no shared ids -> aligned by position
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    (tmp_path / "a" / "questions.jsonl").write_bytes((QA / "medqa" / "en.jsonl").read_bytes())
    (tmp_path / "b" / "questions.jsonl").write_bytes((QA / "medqa" / "fr.jsonl").read_bytes())
    files = [tmp_path / "a" / "questions.jsonl", tmp_path / "b" / "questions.jsonl"]
    a = load_eval_questions(files, langs=["en", "fr"])
    assert a.ids == [f"{tmp_path.name}-a-0", f"{tmp_path.name}-a-1"] and [q.id for q in a.by_lang["fr"]] == a.ids
    assert a.by_lang["fr"][1].options["C"] == "Pancréas"
    with pytest.raises(ValueError, match=r"questions\.jsonl.*--langs with one language per file"):
        load_eval_questions(files)
    with pytest.raises(ConfigError, match=r"no questions in language\(s\) \['de'\].*languages found: \['en', 'zh'\]"):
        load_eval_questions([QA / "xcsr_dev.jsonl"], langs=["en", "de"])
    # a split file keeps its dev questions only, and names itself when an id is missing
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["xcsqa-dev-a1", "not-here"], "dev": ["xcsqa-dev-c3", "xcsqa-dev-b2"]}))
    assert load_eval_questions([QA / "xcsr_dev.jsonl"], split=split).ids == ["xcsqa-dev-b2", "xcsqa-dev-c3"]
    split.write_text(json.dumps({"train": [], "dev": ["xcsqa-dev-c3", "xcsqa-dev-x9"]}))
    with pytest.raises(ValueError, match=r"split\.json: 1 question id\(s\) .*missing.*xcsqa-dev-x9"):
        load_eval_questions([QA / "xcsr_dev.jsonl"], split=split)


def test_evaluate_files_resumes_and_guards_its_folder(tmp_path, tiny_lm_dir, tiny_embedder_path, index_dir):
    from calm_rag.config import ConfigError
    from calm_rag.evaluate import load_report
    from calm_rag.eval_files import evaluate_files

    cfg = _cfg(tiny_lm_dir, tiny_embedder_path, index_dir, generate={"max_new_tokens": 4})
    out = tmp_path / "eval"
    reports = evaluate_files([QA / "xcsr_dev.jsonl"], cfg, retrieval=("never", "always"), out=out)
    assert list(reports) == ["base-never", "base-always"]
    for name, mode in (("base-never", "never"), ("base-always", "always")):
        r = reports[name]
        assert r.langs == ["en", "zh"] and r.n_questions == 3 and r.n_samples == 6  # eval.n = 1
        assert r.meta["retrieval"] == mode and r.meta["adapter"] is None and r.consistency is not None
        assert load_report(out / f"{name}.json") == r
        gens = list(read_jsonl(out / f"{name}.generations.jsonl", Generation))
        assert len(gens) == 6 and all(bool(g.passage_ids) == (mode == "always") for g in gens)
    assert "| base-never |" in (out / "report.md").read_text()
    # a rerun reads the generations instead of sampling again: doctor them all to the gold letter
    gold = {"xcsqa-dev-a1": "A", "xcsqa-dev-b2": "C", "xcsqa-dev-c3": "B"}
    path = out / "base-never.generations.jsonl"
    recs = [dict(json.loads(line), letter=gold[json.loads(line)["question_id"]]) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    again = evaluate_files([QA / "xcsr_dev.jsonl"], cfg, retrieval=("never",), out=out)
    assert again["base-never"].accuracy == {"en": 1.0, "zh": 1.0} and again["base-never"].consistency == 1.0
    # the folder as a metrics JSON pairs with a run's base graded elsewhere (every letter wrong there: +100 points)
    from calm_rag.report import compare_metrics_files, files_metrics

    assert json.loads((out / "gold.json").read_text()) == gold
    files_metrics(out, tmp_path / "files.json")
    wrong = {"A": "B", "B": "C", "C": "D"}
    for tokens in (4, 48):
        base = _metrics_file(tmp_path / f"run{tokens}.json", "run", "base-never",
                             [(q, lang, wrong[g]) for q, g in gold.items() for lang in ("en", "zh")], gold, tokens)
        data = json.loads(base.read_text())
        data["config"]["model"].update(generator=str(tiny_lm_dir), precision=cfg.model.precision)
        base.write_text(json.dumps(data))
    _, change = compare_metrics_files((tmp_path / "run4.json", "base-never"), (tmp_path / "files.json", "base-never"),
                                      n_boot=10, seed=0)
    assert change["metrics"]["accuracy:en+zh"][0] == pytest.approx(1.0) and change["changes"]["wrong_to_right"] == 6
    with pytest.raises(SystemExit, match="different generate.max_new_tokens"):
        compare_metrics_files((tmp_path / "run48.json", "base-never"), (tmp_path / "files.json", "base-never"),
                              n_boot=10, seed=0)
    (out / "gold.json").unlink()
    with pytest.raises(SystemExit, match=r"gold\.json: missing; give the --out folder of `calm-rag calm eval --data"):
        files_metrics(out, tmp_path / "files2.json")
    # the folder refuses other settings instead of mixing their generations
    with pytest.raises(ConfigError, match=r"settings\.json: this folder holds an evaluation with other units"):
        evaluate_files([QA / "xcsr_dev.jsonl"], cfg, retrieval=("never",), max_questions=2, out=out)
    with pytest.raises(ConfigError, match="needs an index"):
        evaluate_files([QA / "xcsr_dev.jsonl"], load_run_config(None, model={"generator": str(tiny_lm_dir)}),
                       retrieval=("always",), out=tmp_path / "other")


def test_loop_runs_unchanged_on_a_native_reflection_token_model(tmp_path, tiny_selfrag_lm_dir, tiny_embedder_path,
                                                                 index_dir, tiny_model_translations):
    """A model with its own reflection tokens (what `calm-rag selfrag distill` makes) goes through
    sampling, vote, pairs and DPO with no other setting: native critique, tokens in the pairs."""
    from calm_rag.pipeline import make_selfrag
    from calm_rag.selfrag import SPECIAL_TOKENS, UTILITY_TOKENS

    run = Run(tmp_path / "run", _cfg(tiny_selfrag_lm_dir, tiny_embedder_path, index_dir))
    rag = make_selfrag(run.cfg, run.retriever())
    assert rag.mode == "native"
    gens = run.sample(rag)
    assert len(gens) == 9 * 3
    # native critique reads the tokens the model wrote: a critique value comes with its token in the text
    assert any(g.critique.use is not None for g in gens)
    for g in gens:
        assert (g.critique.use is not None) == any(t in g.text for t in UTILITY_TOKENS), g.text
    run.vote()
    run.pairs()
    pairs = list(read_jsonl(run.dir / "pairs.jsonl"))
    texts = {g.text for g in gens}
    # the pairs carry the tokens the model sampled, and only those: every text is a sampled completion
    assert pairs and all(p["rejected"] in texts and (p["chosen"] in texts or p["chosen_source"] == "translation")
                         for p in pairs)
    result = run.train()
    adapter = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert len(adapter["trainable_token_indices"]) == len(SPECIAL_TOKENS)  # DPO moves the token rows too


# ---------------------------------------------------------------- on-policy pairs, the training signal, bad input


@pytest.mark.parametrize("backend", ["transformers", "llama.cpp"])
@pytest.mark.parametrize("which", ["tiny_lm_dir", "tiny_selfrag_lm_dir"])
def test_pairs_are_the_models_own_completions_on_both_backends(which, backend, request, tmp_path, monkeypatch,
                                                               tiny_embedder_path, index_dir):
    """Every pair's chosen and rejected equal, byte for byte, a completion the generator returned for that
    question and language (verbalised and native critique; answer-cue completions included), except
    chosen texts marked as translations."""
    from calm_rag.generate import load_generator
    from calm_rag.pipeline import make_selfrag
    from tests.fixtures.recording import Recording

    if backend == "llama.cpp":
        pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
        monkeypatch.setenv("CALM_RAG_HOME", str(tmp_path / "home"))  # the GGUF conversion cache
    model = request.getfixturevalue(which)
    kwargs = {"precision": "f32"} if backend == "llama.cpp" else {"device": "cpu"}
    gen = Recording(load_generator(str(model), backend=backend, **kwargs))
    run = Run(tmp_path / "run", _cfg(model, tiny_embedder_path, index_dir, data={"max_train": 2}))
    rag = make_selfrag(run.cfg, run.retriever(), generator=gen)
    assert rag.mode == ("native" if which == "tiny_selfrag_lm_dir" else "verbalised")
    gens = run.sample(rag)
    assert gens and all(g.text in gen.sampled for g in gens)
    assert any(g.completed for g in gens)  # the tiny model names no letter: the answer-cue step fills it in
    for g in gens:
        assert g.completion == (f"\n{_cue(g.lang)} {g.letter}" if g.completed else "")
    run.vote()
    run.pairs(translate=lambda text, src, tgt: f"({tgt}) {text}")
    by_unit = {(g.question_id, g.lang, g.prompt, g.text) for g in gens}
    pairs = list(read_jsonl(run.dir / "pairs.jsonl"))
    assert pairs
    for p in pairs:
        assert (p["question_id"], p["lang"], p["prompt"], p["rejected"]) in by_unit
        if p["chosen_source"] == "translation":
            assert p["chosen"].startswith(f"({p['lang']}) ")
        else:
            assert any(p["chosen"] == t for q, lang, _, t in by_unit if (q, lang) == (p["question_id"], p["lang"]))


def _cue(lang):
    from calm_rag.languages import text_for

    return text_for(lang).answer_cue


def test_signal_is_printed_and_a_chance_level_vote_warns(capsys):
    from calm_rag.cli_output import print_signal
    from calm_rag.vote import training_signal, vote_all

    gens = [Generation("q1", "en", 0, "x", "A"), Generation("q1", "zh", 0, "y", "A"),
            Generation("q2", "en", 0, "x", "B"), Generation("q2", "zh", 0, "y", "C")]
    votes = vote_all(gens)
    record = {"pairs": 1, "per_lang": {"en": 0, "zh": 1}, "translated": 1, "translated_share": 1.0,
              "translations_dropped": 2, "signal": training_signal(gens, votes, {"q1": "A", "q2": "D"}, {"q1": 4, "q2": 4}, 0.75)}
    print_signal(record)
    out = capsys.readouterr()
    assert "vote accuracy 50% (1/2), chance 25%" in out.out and "sample accuracy: en 50%, zh 50%" in out.out
    assert "1.0-1.0" not in out.out and "0.9-1.0: 1 (1/1 right)" in out.out and "0.5-0.6: 1 (0/1 right)" in out.out
    assert "min_agreement 0.75: 1 question(s) kept, vote accuracy 100% (1/1)" in out.out
    assert ("pairs per language: en 0, zh 1 (1 in all; translated chosen: 1, 100%; translations dropped for "
            "another or no letter: 2)") in out.out
    assert out.err == ""
    record["signal"] = training_signal(gens, votes, {"q1": "B", "q2": "D"}, {"q1": 4, "q2": 4})
    print_signal(record)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning: the cross-lingual vote is right on 0/2" in err
    assert "no better than chance (25%)" in err and "--min-agreement" in err and "--vote weighted" in err


def test_stage_inputs_and_settings_fail_in_one_line(tmp_path, capsys):
    from calm_rag.cli import main

    run = tmp_path / "run"
    assert main(["calm", "train", "--run", str(run)]) == 2  # the pairs file is missing when train starts
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "calm train:" in err and "pairs.jsonl is missing" in err
    assert f"calm-rag calm pairs --run {run}" in err
    assert main(["calm", "pairs", "--run", str(run)]) == 2
    assert f"calm-rag calm sample --run {run}" in capsys.readouterr().err
    for bad in ("1.5", "-0.1"):
        assert main(["calm", "pairs", "--run", str(run), "--min-agreement", bad]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"pairs.min_agreement={float(bad)}; use a share of the votes in [0, 1]" in err
    # a run YAML for 2 languages given the file of 1
    repo = __import__("pathlib").Path(__file__).resolve().parent.parent
    yaml_path = tmp_path / "two.yaml"
    yaml_path.write_text(f"calm: {{languages: [en, zh]}}\ndata:\n  files: {{en: {repo}/calm_rag/data/demo_questions/en.json}}\n")
    assert main(["calm", "sample", "--config", str(yaml_path), "--run", str(tmp_path / "two")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "two.yaml [data]: data.files has no file for language(s) ['zh']" in err
    assert "add zh: PATH under data.files, or run fewer languages (--langs en)" in err
    assert not (tmp_path / "two").exists()  # refused before the run folder is made


def test_sweep_picks_hyperparameters_on_the_validation_slice(tmp_path, tiny_lm_dir, tiny_embedder_path, index_dir,
                                                             monkeypatch, tiny_model_translations):
    """DPO arms trained on a run's pairs and graded on the train split's validation slice, never the dev split."""
    from calm_rag.config import ConfigError
    from calm_rag.sweep import parse_arm, run_sweep

    ids = [f"data-demo_questions-{i}" for i in range(24)]
    split, val, bad = tmp_path / "split.json", tmp_path / "val.json", tmp_path / "bad.json"
    split.write_text(json.dumps({"train": ids[:12], "dev": ids[12:]}))
    val.write_text(json.dumps({"train": ids[:8], "dev": ids[8:12]}))  # the end of the train list
    bad.write_text(json.dumps({"train": ids[3:12], "dev": ids[:3]}))  # the questions the run trains on
    run = Run(tmp_path / "run", _cfg(tiny_lm_dir, tiny_embedder_path, index_dir, data={"split": str(split)},
                                     selfrag={"retrieval": "never"}, eval={"retrieval": ("never",)}))
    run.sample()
    run.vote()
    run.pairs()
    arms = [parse_arm("learning_rate=1e-2,max_steps=1"), parse_arm("beta=0.5, learning_rate=1e-2, max_steps=2")]
    import calm_rag.train

    real_train, calls = calm_rag.train.train_dpo, []

    def cut_at_second_arm(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 2:
            raise KeyboardInterrupt  # the session ends while the second arm trains
        return real_train(*args, **kwargs)

    monkeypatch.setattr(calm_rag.train, "train_dpo", cut_at_second_arm)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(run.dir, arms, val, tmp_path / "sweep.json")
    partial = json.loads((tmp_path / "sweep.json").read_text())  # the graded arm is on disk already
    assert partial["complete"] is False and list(partial["arms"]) == ["learning_rate0.01-max_steps1"]
    assert "chosen" not in partial and partial["base"]["n_questions"] == 4
    monkeypatch.setattr(calm_rag.train, "train_dpo", real_train)
    run_sweep(run.dir, arms, val, tmp_path / "sweep.json")
    result = json.loads((tmp_path / "sweep.json").read_text())
    assert result["complete"] is True
    assert list(result["arms"]) == ["learning_rate0.01-max_steps1", "beta0.5-learning_rate0.01-max_steps2"]
    assert [a["steps"] for a in result["arms"].values()] == [1, 2]
    first = "learning_rate0.01-max_steps1"  # trained in the first call: its time is the training's, not the resume's
    assert result["arms"][first]["train_seconds"] == pytest.approx(partial["arms"][first]["train_seconds"], rel=0.5)
    assert result["arms"]["beta0.5-learning_rate0.01-max_steps2"]["train"]["beta"] == 0.5
    graded = {json.loads(x)["question_id"] for x in
              (run.dir / "sweep" / "base" / "base-never.generations.jsonl").read_text().splitlines()}
    assert graded == set(ids[8:12]) and result["base"]["n_questions"] == 4  # the slice, not the dev questions
    def chars(folder):  # read from the evaluation records themselves, not from the sweep's JSON
        texts = [json.loads(x)["text"] for f in folder.glob("*.generations.jsonl") for x in f.read_text().splitlines()]
        return sum(map(len, texts)) / len(texts)

    base_chars = chars(run.dir / "sweep" / "base")
    assert result["base"]["mean_answer_chars"] == pytest.approx(base_chars, abs=0.05)
    scores = {n: a["val"]["mean_accuracy"] + a["val"]["consistency"] for n, a in result["arms"].items()
              if chars(run.dir / "sweep" / n / "val") >= 0.5 * base_chars}
    assert result["chosen"] == (max(scores, key=scores.get) if scores else None)
    # the chosen arm becomes the run's adapter without training it again (what scripts/sweep_dpo.py suggests)
    import dataclasses
    import shutil

    chosen = result["arms"][result["chosen"]]
    shutil.copytree(run.dir / "sweep" / result["chosen"], run.dir / "train")
    weights = (run.dir / "train" / "adapter" / "adapter_model.safetensors").read_bytes()
    again = Run(run.dir, dataclasses.replace(run.cfg, train=dataclasses.replace(run.cfg.train, **chosen["changes"])))
    trained = again.train()
    assert trained.steps == chosen["steps"] and trained.resumed_from is None  # nothing trained again
    assert (run.dir / "train" / "adapter" / "adapter_model.safetensors").read_bytes() == weights
    with pytest.raises(ConfigError, match=r"overlap .*run's training questions"):
        run_sweep(run.dir, arms[:1], bad, tmp_path / "bad-sweep.json")
    with pytest.raises(ConfigError, match=r"'beta' is not KEY=VALUE"):
        parse_arm("beta")
    with pytest.raises(ConfigError, match=r"betta"):
        parse_arm("betta=0.1")


def test_a_run_folder_started_by_an_older_calm_rag_resumes(tmp_path, tiny_lm_dir, tiny_embedder_path, index_dir):
    """A manifest with options removed since (calm.max_questions, eval.before_after), without options added since
    (calm.reuse) and with unnormalised data paths is the same run: it resumes, from its YAML or its manifest."""
    from calm_rag.config_files import saved_run_config

    cfg = _cfg(tiny_lm_dir, tiny_embedder_path, index_dir)
    run = Run(tmp_path / "run", cfg)
    manifest = json.loads(run.manifest_path.read_text())
    old = manifest["config"]
    old["calm"].pop("reuse")
    old["calm"]["max_questions"] = None
    old["eval"]["before_after"] = True
    old["data"]["files"] = {k: v.replace("/calm_rag/", "/calm_rag/./") for k, v in old["data"]["files"].items()}
    run.manifest_path.write_text(json.dumps(manifest))
    Run(run.dir, cfg)  # no "started with other settings"
    run.manifest_path.write_text(json.dumps(manifest))
    again = saved_run_config(run.dir)
    assert again.calm == cfg.calm and again.eval == cfg.eval
    with pytest.raises(ValueError, match="other calm settings"):  # a real change is still refused
        Run(run.dir, _cfg(tiny_lm_dir, tiny_embedder_path, index_dir, calm={"languages": ("en", "zh")}))


def test_report_describes_a_zero_shot_run_without_an_index():
    """A zero-shot run names no index; the report used to crash on Path(None)."""
    from calm_rag.report import retrieval_text
    assert retrieval_text({"retrieval": "never", "index": None, "top_k": 3}) == "zero-shot (retrieval never)"
    assert retrieval_text({"retrieval": "always", "index": "indexes/demo", "top_k": 2}) == \
        "k=2 passages from `demo` (retrieval always)"


def test_sweep_never_chooses_an_arm_that_collapsed_to_bare_letters():
    """The lr 3e-4 arm on the 1.5B answered 'C' (9 characters) where the base explained (179): it scored 0.001
    above lr 1e-4 and must still lose to it."""
    from calm_rag.sweep import choose

    def val(acc, cons, chars):
        return {"mean_accuracy": acc, "consistency": cons, "mean_answer_chars": chars}

    result = {"base": val(0.456, 0.451, 179.0),
              "arms": {"lr1e-4": {"val": val(0.489, 0.444, 160.0)}, "lr3e-4": {"val": val(0.472, 0.462, 9.0)}}}
    assert choose(result) == "lr1e-4"
    result["arms"]["lr3e-4"]["val"]["mean_answer_chars"] = 150.0  # explains again: the higher score wins
    assert choose(result) == "lr3e-4"
    result["arms"] = {"lr3e-4": {"val": val(0.472, 0.462, 9.0)}}
    assert choose(result) is None  # nothing eligible: no winner rather than a collapsed one


def test_lean_zero_shot_run_skips_the_critique_and_the_translations(tmp_path, tiny_lm_dir, tiny_embedder_path,
                                                                     index_dir, monkeypatch):
    """selfrag.critique_zero_shot=false asks no utility question while sampling; pairs.translate=false makes no
    Translator and leaves every chosen a sampled completion; turning translation back on remakes the pairs."""
    from calm_rag.translate import Translator

    lean = {"selfrag": {"retrieval": "never", "critique_zero_shot": False}, "pairs": {"translate": False}}
    run = Run(tmp_path / "run", _cfg(tiny_lm_dir, tiny_embedder_path, index_dir, **lean))
    gens = run.sample()
    assert gens and all(g.critique.use is None for g in gens)
    run.vote()

    def no_translator(*args, **kwargs):
        raise AssertionError("a Translator was made")

    monkeypatch.setattr(Translator, "__init__", no_translator)
    run.pairs()
    pairs = list(read_jsonl(run.dir / "pairs.jsonl"))
    texts = {(g.question_id, g.lang, g.text) for g in gens}
    assert all((p["question_id"], p["lang"], p["chosen"]) in texts and p["chosen_source"] != "translation"
               for p in pairs)
    record = run.manifest["stages"]["pairs"]
    assert record["translate"] is False and record["translated"] == 0
    made = (run.dir / "pairs.jsonl").stat().st_ino
    monkeypatch.undo()
    again = Run(tmp_path / "run", _cfg(tiny_lm_dir, tiny_embedder_path, index_dir,
                                       selfrag=lean["selfrag"], pairs={"translate": True}))
    again.pairs(translate=lambda text, src, tgt: text)
    assert again.manifest["stages"]["pairs"]["translate"] is True
    assert (again.dir / "pairs.jsonl").stat().st_ino != made


def test_weighted_vote_without_zero_shot_critique_is_a_config_error(tiny_lm_dir, tiny_embedder_path, index_dir):
    from calm_rag.config import ConfigError

    with pytest.raises(ConfigError, match="critique_zero_shot"):
        _cfg(tiny_lm_dir, tiny_embedder_path, index_dir, calm={"vote": "weighted"},
             selfrag={"retrieval": "never", "critique_zero_shot": False})


def test_answer_changes_hand_worked():
    """Letters changed, right answers lost and won, and the mean length, on four units worked by hand."""
    from calm_rag.records import Generation
    from calm_rag.report import answer_changes

    gold = {"q1": "A", "q2": "B"}
    before = [Generation("q1", "en", 0, "A because", "A"), Generation("q1", "zh", 0, "B", "B"),
              Generation("q2", "en", 0, "B!", "B"), Generation("q2", "zh", 0, "", None)]
    after = [Generation("q1", "en", 0, "C", "C"), Generation("q1", "zh", 0, "A is it", "A"),
             Generation("q2", "en", 0, "C", "C"), Generation("q2", "zh", 0, "D", "D"),
             Generation("q3", "en", 0, "never answered by the base", "A")]
    assert answer_changes(before, after, gold) == {
        "units": 4, "changed": 4, "right_to_wrong": 2, "wrong_to_right": 1,
        "chars_before": (9 + 1 + 2 + 0) / 4, "chars_after": (1 + 7 + 1 + 1) / 4}


def _metrics_file(path, run, name, answers, gold, max_new_tokens=48, meta=None):
    """A metrics JSON as run_section writes it: config, reports and the graded letters of one model."""
    from calm_rag.evaluate import evaluate_generations
    from calm_rag.records import Generation

    gens = [Generation(q, lang, 0, "", letter) for q, lang, letter in answers]
    config = {"model": {"generator": "g", "precision": "q8_0"}, "generate": {"max_new_tokens": max_new_tokens},
              "selfrag": {"critique": "auto", "complete_answer": True}, "eval": {"n": 1}}
    path.write_text(json.dumps({"run": run, "config": config, "gold": gold,
                                "reports": {name: evaluate_generations(gens, gold, meta=meta).to_dict()},
                                "answers": {name: [[q, lang, 0, letter] for q, lang, letter in answers]}}))
    return path


def test_compare_metrics_files_hand_worked(tmp_path):
    """A CALM model graded in one session against the base graded in another, from the two metrics files' letters:
    the changes worked by hand (zh: 0/2 -> 2/2 right; both questions go from disagreeing to agreeing)."""
    from calm_rag.report import compare_metrics_files

    gold = {"q1": "A", "q2": "B"}
    base = _metrics_file(tmp_path / "old.json", "old", "base-never",
                         [("q1", "en", "A"), ("q1", "zh", "B"), ("q2", "en", "B"), ("q2", "zh", None)], gold)
    calm = _metrics_file(tmp_path / "new.json", "new", "calm-never",
                         [("q1", "en", "A"), ("q1", "zh", "A"), ("q2", "en", "B"), ("q2", "zh", "B")], gold)
    text, data = compare_metrics_files((base, "base-never"), (calm, "calm-never"), n_boot=200, seed=0)
    m = data["metrics"]
    assert m["accuracy:en"][0] == 0.0 and m["accuracy:zh"][0] == pytest.approx(1.0)
    assert m["consistency"][0] == pytest.approx(1.0) and m["accuracy:en+zh"][0] == pytest.approx(0.5)
    assert data["changes"] == {"units": 4, "changed": 2, "right_to_wrong": 0, "wrong_to_right": 2}
    assert (data["before"], data["after"]) == ("old:base-never", "new:calm-never")
    assert "| new:calm-never |" in text and "2 wrong -> right" in text
    with pytest.raises(SystemExit, match="no graded letters for 'calm-never'"):
        compare_metrics_files((base, "base-never"), (base, "calm-never"), n_boot=10, seed=0)
    other = _metrics_file(tmp_path / "other.json", "other", "calm-never", [("q1", "en", "A")], {"q1": "A"})
    with pytest.raises(SystemExit, match="different questions or gold letters"):
        compare_metrics_files((base, "base-never"), (other, "calm-never"), n_boot=10, seed=0)
    longer = _metrics_file(tmp_path / "long.json", "long", "calm-never",
                           [("q1", "en", "A"), ("q1", "zh", "A"), ("q2", "en", "B"), ("q2", "zh", "B")], gold, 64)
    with pytest.raises(SystemExit, match="different generate.max_new_tokens"):
        compare_metrics_files((base, "base-never"), (longer, "calm-never"), n_boot=10, seed=0)
    # rows that retrieved pair only when they read the same index with the same k
    letters = [("q1", "en", "A"), ("q1", "zh", "A"), ("q2", "en", "B"), ("q2", "zh", "B")]
    read = {"retrieval": "always", "index": "/x/commonsense-lite"}
    two = _metrics_file(tmp_path / "k2.json", "k2", "base-always", letters, gold, meta={**read, "top_k": 2})
    three = _metrics_file(tmp_path / "k3.json", "k3", "calm-always", letters, gold, meta={**read, "top_k": 3})
    again = _metrics_file(tmp_path / "k2b.json", "k2b", "calm-always", letters, gold, meta={**read, "top_k": 2})
    assert compare_metrics_files((two, "base-always"), (again, "calm-always"), n_boot=10, seed=0)[1]["changes"]["changed"] == 0
    with pytest.raises(SystemExit, match=r"calm-always and base-always retrieved with different top_k \(\[3\] vs \[2\]\)"):
        compare_metrics_files((two, "base-always"), (three, "calm-always"), n_boot=10, seed=0)


def test_ablation_against_a_base_in_another_file(tmp_path):
    """An ablation arm graded alone (`calm eval --models calm`) against the base of another metrics file: the
    pooled trained / held-out accuracy, vote and consistency changes worked by hand (en, zh trained; fr held out)."""
    from calm_rag.report import ablation_arms, ablation_table

    gold = {"q1": "A", "q2": "B"}
    base = _metrics_file(tmp_path / "base.json", "six", "base-never",
                         [("q1", "en", "A"), ("q1", "zh", "B"), ("q1", "fr", "B"),  # vote B (wrong), 1 of 3 pairs agree
                          ("q2", "en", "B"), ("q2", "zh", None), ("q2", "fr", "B")], gold)  # vote B (right), 1 of 3
    arm = _metrics_file(tmp_path / "arm.json", "arm-2", "calm-never",
                        [("q1", "en", "A"), ("q1", "zh", "A"), ("q1", "fr", "A"),  # vote A (right), 3 of 3
                         ("q2", "en", "B"), ("q2", "zh", "B"), ("q2", "fr", "C")], gold)  # vote B (right), 1 of 3
    data = json.loads(arm.read_text())
    data["config"]["calm"] = {"languages": ["en", "zh"]}
    data["stages"] = {"pairs": {"pairs": 7}}
    arm.write_text(json.dumps(data))
    # trained en+zh: 2 of 4 -> 4 of 4 right; held out fr: 1 of 2 -> 1 of 2; vote 1 of 2 -> 2 of 2; consistency 1/3 -> 2/3
    row = ablation_table(ablation_arms([arm], "calm-never vs base-never", base=(base, "base-never"))).splitlines()[2]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:4] == ["arm-2", "en, zh", "–", "7"]
    assert [c.split(" [")[0] for c in cells[4:]] == ["+50.0", "+0.0", "+50.0", "+33.3"]
    with pytest.raises(SystemExit, match="no graded letters for 'calm-always'"):
        ablation_arms([arm], "calm-always vs base-always", base=(base, "base-never"))


def test_a_zero_shot_run_is_graded_with_retrieval_later_and_rows_never_mix_passage_counts(
        tmp_path, tiny_lm_dir, tiny_embedder_path, index_dir):
    """A zero-shot run read no passage, so its evaluation may name an index and a k afterwards; each row records
    them, resumes only with them, and two rows that read different k are not compared."""
    import dataclasses
    from pathlib import Path

    from calm_rag.config import ConfigError
    from calm_rag.evaluate import load_report
    from calm_rag.report import check_same_passages, passages_text

    def at(k, retrieval="never"):
        return Run(tmp_path / "r", _cfg(tiny_lm_dir, tiny_embedder_path, index_dir, generate={"max_new_tokens": 4},
                                         selfrag={"retrieval": retrieval, "top_k": k}, eval={"retrieval": ("always",)}))

    at(3).evaluate(which=("base",))
    row = tmp_path / "r" / "eval" / "base-always"
    three = load_report(row.with_suffix(".json"))
    assert (three.meta["top_k"], three.meta["index"]) == (3, str(Path(index_dir).resolve()))
    assert {len(g.passage_ids) for g in read_jsonl(row.with_suffix(".generations.jsonl"), Generation)} == {3}
    second = at(2)  # accepted: the samples read no passage
    with pytest.raises(ConfigError, match=r"base-always\.retrieval\.json: row base-always was answered with other "
                                          r"retrieval settings \(top_k 3 -> 2\)"):
        second.evaluate(which=("base",))
    for path in row.parent.glob("base-always.*"):
        path.unlink()
    second.evaluate(which=("base",))
    two = load_report(row.with_suffix(".json"))
    assert {len(g.passage_ids) for g in read_jsonl(row.with_suffix(".generations.jsonl"), Generation)} == {2}
    assert passages_text(two.meta) == f" (k=2 passages from `{Path(index_dir).name}`)"
    check_same_passages(tmp_path, ("base-always", two), ("calm-always", dataclasses.replace(two)))
    with pytest.raises(SystemExit, match="calm-always and base-always retrieved with different top_k"):
        check_same_passages(tmp_path, ("base-always", two), ("calm-always", three))
    never = dataclasses.replace(three, meta={"retrieval": "never"})  # retrieval - zero-shot: nothing to match
    check_same_passages(tmp_path, ("base-never", never), ("base-always", two))
    # a run that retrieved while sampling keeps its passages fixed
    Run(tmp_path / "s", _cfg(tiny_lm_dir, tiny_embedder_path, index_dir, selfrag={"top_k": 2}))
    with pytest.raises(ConfigError, match="other selfrag settings"):
        Run(tmp_path / "s", _cfg(tiny_lm_dir, tiny_embedder_path, index_dir, selfrag={"top_k": 3}))
