"""The calm-rag command, in process, on tiny models: every subcommand a user reaches first."""

import json
import shutil
from pathlib import Path

import pytest

from calm_rag.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_models_list_and_unknown(capsys):
    code, out, _ = _run(capsys, "models", "list", "--json")
    assert code == 0
    names = {row["name"] for row in json.loads(out)}
    assert {"qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct", "multilingual-e5-small"} <= names
    code, _, err = _run(capsys, "models", "info", "no-such-model")
    assert code == 2 and "no-such-model" in err and "qwen2.5-coder-0.5b-instruct" in err


def test_models_info_local_folder(capsys, tiny_lm_dir):
    code, out, _ = _run(capsys, "models", "info", str(tiny_lm_dir))
    assert code == 0 and "chat template:  yes" in out and "Qwen2ForCausalLM" in out


@pytest.fixture(scope="module")
def cli_index(tmp_path_factory, tiny_embedder_path):
    from calm_rag.corpora import DEMO_CORPUS

    out = tmp_path_factory.mktemp("cli") / "idx"
    code = main(["index", "build", "--corpus", str(DEMO_CORPUS / "en.jsonl"), str(DEMO_CORPUS / "zh.jsonl"),
                 "--out", str(out), "--embedder", str(tiny_embedder_path)])
    assert code == 0
    return out


def test_index_info_and_search(capsys, cli_index):
    code, out, _ = _run(capsys, "index", "info", str(cli_index))
    info = json.loads(out)
    assert code == 0 and info["documents"] == 116 and set(info["by_lang"]) == {"en", "zh"}  # 116 lines in en+zh
    assert info["passages"] == sum(info["by_lang"].values()) >= info["documents"]  # long documents split
    code, out, _ = _run(capsys, "index", "search", str(cli_index), "vitamin", "维生素", "-k", "3", "--lang", "zh", "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 2 and all(len(r) == 3 for r in rows)
    assert all(h["passage"]["lang"] == "zh" for r in rows for h in r)


def test_index_errors_are_one_line(capsys, tmp_path):
    code, _, err = _run(capsys, "index", "info", str(tmp_path / "missing"))
    assert code == 2 and err.count("\n") == 1 and "missing" in err


def test_ask_json(capsys, cli_index, tiny_lm_dir):
    code, out, _ = _run(capsys, "ask", "Where do you keep milk?", "--index", str(cli_index), "--model", str(tiny_lm_dir),
                        "--options", "A. fridge", "B. oven", "--retrieval", "always", "-k", "2",
                        "--max-new-tokens", "8", "--json")
    rec = json.loads(out)
    assert code == 0 and rec["retrieved"] is True and rec["critique_mode"] == "verbalised"
    assert rec["question"]["lang"] == "en" and rec["question"]["options"] == {"A": "fridge", "B": "oven"}
    assert len(rec["candidates"]) == 2 and all(c["passage"] for c in rec["candidates"])


def test_calm_stages_from_yaml(capsys, tmp_path, cli_index, tiny_lm_dir, tiny_embedder_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"""
model: {{generator: "{tiny_lm_dir}", embedder: "{tiny_embedder_path}"}}
calm: {{languages: [en, zh]}}
generate: {{n: 2, max_new_tokens: 6, temperature: 1.0}}
selfrag: {{index: "{cli_index}", top_k: 2, retrieval: always}}
data: {{max_train: 2, max_eval: 1}}
""")
    run = tmp_path / "run"
    code, out, err = _run(capsys, "calm", "sample", "--config", str(cfg), "--run", str(run))
    assert code == 0, err
    # eval before train: one line naming the command to run first, before the base model answers anything
    code, _, err = _run(capsys, "calm", "eval", "--run", str(run))
    assert code == 2 and err.count("\n") == 1 and "calm eval:" in err and f"calm-rag calm train --run {run}" in err
    assert not (run / "eval").exists()
    for stage in ("vote", "pairs"):  # a rerun in the run folder needs no --config: the manifest holds it
        code, out, err = _run(capsys, "calm", stage, "--run", str(run))
        assert code == 0, err
    assert "pairs per language: en" in out
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["sample"]["generations"] == 2 * 2 * 2
    code, _, err = _run(capsys, "calm", "sample", "--config", str(cfg), "--run", str(run), "-n", "3")
    assert code == 2 and "other generate settings" in err


def test_bad_config_key(capsys, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("generate: {samples: 3}\n")
    code, _, err = _run(capsys, "calm", "sample", "--config", str(cfg), "--run", str(tmp_path / "r"))
    assert code == 2 and "samples" in err and "known keys" in err


def test_calm_eval_on_data_files(capsys, tmp_path, monkeypatch, cli_index, tiny_lm_dir):
    from pathlib import Path

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "adapter"
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir)),
                          LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    lora.save_pretrained(str(adapter))
    data = Path(__file__).resolve().parent / "data" / "qa" / "xcsr_dev.jsonl"
    args = ["calm", "eval", "--data", str(data), "--model", str(tiny_lm_dir), "--index", str(cli_index), "-k", "1",
            "--max-new-tokens", "4", "--retrieval", "never", "always", "--max-questions", "2", "--out", str(tmp_path / "ev")]
    code, out, err = _run(capsys, *args, "--adapter", str(adapter), "--json")
    assert code == 0, err
    result = json.loads(out)
    reports = result["reports"]
    assert list(reports) == ["calm-never", "calm-always"]
    for r in reports.values():
        assert r["langs"] == ["en", "zh"] and r["n_questions"] == 2 and set(r["accuracy"]) == {"en", "zh"}
        assert r["meta"]["adapter"] == str(adapter) and "consistency" in r
    # the first mode's set-level metrics are top-level keys (what a script reads)
    first = reports["calm-never"]
    assert result["run"] == "calm-never" and result["consistency"] == first["consistency"]
    assert result["mean_accuracy"] == pytest.approx((first["accuracy"]["en"] + first["accuracy"]["zh"]) / 2)
    # the table, from the stored generations; another adapter setting needs another folder
    code, out, err = _run(capsys, *args, "--adapter", str(adapter), "--langs", "zh,en")
    assert code == 2 and "other langs" in err
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(capsys, *args[:-2], "--langs", "en", "--retrieval", "never")
    assert code == 0, err
    assert "| run | acc en | vote acc | consistency |" in out and "| base-never |" in out
    assert "runs/eval/" in out and len(list((tmp_path / "runs" / "eval").iterdir())) == 1  # a folder per setting
    # run-folder flags stay with run folders
    code, _, err = _run(capsys, "calm", "eval", "--run", str(tmp_path / "run"), "--adapter", str(adapter))
    assert code == 2 and "--adapter goes with --data" in err


def test_calm_index_flag_is_relative_to_the_working_folder(capsys, tmp_path, monkeypatch, cli_index, tiny_lm_dir):
    """--index DIR names DIR in the working folder, with or without a YAML elsewhere (not the YAML's folder or the
    repo root)."""
    work, conf = tmp_path / "work", tmp_path / "conf"
    work.mkdir()
    conf.mkdir()
    (work / "my-index").symlink_to(cli_index)
    (conf / "run.yaml").write_text(f'model: {{generator: "{tiny_lm_dir}"}}\ncalm: {{languages: [en, zh]}}\n')
    monkeypatch.chdir(work)
    for config in (["--config", str(conf / "run.yaml")], []):
        run = tmp_path / f"run{len(config)}"
        code, _, err = _run(capsys, "calm", "vote", *config, "--run", str(run), "--index", "my-index")
        assert code == 2 and "calm-rag calm sample" in err  # nothing sampled yet; the folder has its config
        saved = json.loads((run / "manifest.json").read_text())["config"]["selfrag"]["index"]
        assert saved == str(work / "my-index"), config


def test_calm_run_prints_the_signal_before_dpo_and_the_table_after(capsys, tmp_path, tiny_lm_dir, tiny_embedder_path,
                                                                   cli_index, tiny_model_translations):
    """`calm run` end to end on the tiny model, zero-shot: every stage, the training signal, the before/after table,
    and a rerun that finds everything done."""
    (tmp_path / "run.yaml").write_text(
        f'model: {{generator: "{tiny_lm_dir}", embedder: "{tiny_embedder_path}"}}\ncalm: {{languages: [en, zh]}}\n'
        'data: {max_train: 2, max_eval: 2}\ngenerate: {n: 3, max_new_tokens: 6, temperature: 1.0, seed: 1}\n'
        'selfrag: {retrieval: never}\ntrain: {max_steps: 1, batch_size: 1, max_length: 512}\n'
        'eval: {retrieval: [never]}\n')
    run = tmp_path / "r"
    code, out, err = _run(capsys, "calm", "run", str(tmp_path / "run.yaml"), "--run", str(run))
    assert code == 0, err
    signal = out.index("training signal (calm.vote=majority), 2 of 2 training question(s) with gold")
    table = out.index("| base-never |")
    assert signal < table and "| calm-never |" in out and "pairs per language: en " in out
    manifest = json.loads((run / "manifest.json").read_text())
    assert set(manifest["stages"]) == {"sample", "vote", "pairs", "train", "eval"}
    assert manifest["stages"]["train"]["steps"] == 1 and manifest["stages"]["eval"]["runs"] == ["base-never",
                                                                                               "calm-never"]
    assert not (run / "index").exists() and "demo index" not in err  # zero-shot: no index is built or loaded
    code, again, err = _run(capsys, "calm", "run", "--run", str(run))  # the manifest holds the config
    assert code == 0, err
    assert again[again.index("| run |"):] == out[out.index("| run |"):]
    # the zero-shot run's models evaluated with retrieval too: the index may be named now, the rows add up
    code, more, err = _run(capsys, "calm", "eval", "--run", str(run), "--index", str(cli_index), "--retrieval", "always")
    assert code == 0, err
    assert all(f"| {row} |" in more for row in ("base-never", "calm-never", "base-always", "calm-always"))
    code, js, err = _run(capsys, "calm", "eval", "--run", str(run), "--json")  # done: read back, same JSON shape
    assert code == 0, err
    data = json.loads(js)
    assert set(data["reports"]) == {"base-never", "calm-never", "base-always", "calm-always"}
    assert data["consistency"] == data["reports"][data["run"]]["consistency"] and "mean_accuracy" in data
    code, _, err = _run(capsys, "calm", "sample", "--run", str(run), "-n", "2")  # sampling settings stay fixed
    assert code == 2 and "other generate settings" in err
    # the CALM model alone, its base graded elsewhere (a run folder lasts one session): no base is generated
    shutil.rmtree(run / "eval")
    code, js, err = _run(capsys, "calm", "eval", "--run", str(run), "--models", "calm", "--retrieval", "never",
                        "--json")
    assert code == 0, err
    assert set(json.loads(js)["reports"]) == {"calm-never"} and not (run / "eval" / "base-never.generations.jsonl").exists()
    assert (run / "eval" / "calm-never.generations.jsonl").read_text().count("\n") == 2 * 2  # 2 questions x 2 languages


def test_vv_shows_the_traceback_behind_an_error(capsys, tmp_path):
    code, _, err = _run(capsys, "index", "info", str(tmp_path / "missing"))
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1
    code, _, err = _run(capsys, "-vv", "index", "info", str(tmp_path / "missing"))
    assert code == 2 and "Traceback (most recent call last)" in err and "load_index" in err
    assert err.splitlines()[-1].startswith("calm-rag: error:") and "missing" in err.splitlines()[-1]


def _cli(args, cwd, home, stdin="", timeout=300):
    """`calm-rag ARGS` in a fresh process, from `cwd`, with $CALM_RAG_HOME at `home`."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, CALM_RAG_HOME=str(home), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "calm_rag.cli", *args], cwd=cwd, env=env, input=stdin,
                          capture_output=True, text=True, timeout=timeout)


def test_vv_shows_the_shells_start_error_traceback(tmp_path, tiny_lm_dir):
    args = ["shell", "--index", str(tmp_path / "nope"), "--model", str(tiny_lm_dir)]
    quiet = _cli(args, tmp_path, tmp_path / "home")
    flat = " ".join(quiet.stderr.split())  # rich wraps the message at the terminal's width
    assert quiet.returncode == 2 and "no such index folder" in flat and "Traceback" not in flat
    loud = _cli(["-vv", *args], tmp_path, tmp_path / "home")
    assert loud.returncode == 2 and "Traceback (most recent call last)" in loud.stderr, loud.stderr[-2000:]
    assert "no such index folder" in " ".join(loud.stderr.split())


def _home_with_tiny_embedder(home, tiny_embedder_path):
    """$CALM_RAG_HOME where the packaged default embedder is the tiny one: the bundled defaults, offline."""
    import shutil

    from calm_rag.models import DEFAULT_EMBEDDER, MARKER

    folder = home / "models" / DEFAULT_EMBEDDER
    shutil.copytree(tiny_embedder_path, folder)
    (folder / MARKER).write_text("{}\n")
    return home


def test_shell_starts_from_any_folder_on_the_bundled_demo_index(tmp_path, tiny_lm_dir, tiny_embedder_path):
    """From an empty folder, outside the repo: the demo index is built on first use (with a progress bar) in
    $CALM_RAG_HOME from the demo corpus shipped with the package, then reused."""
    empty = tmp_path / "empty"
    empty.mkdir()
    home = _home_with_tiny_embedder(tmp_path / "home", tiny_embedder_path)
    args = ["shell", "--model", str(tiny_lm_dir), "--backend", "transformers", "--retrieval", "always", "-k", "1",
            "--max-new-tokens", "4"]
    first = _cli(args, empty, home, stdin="Where do you keep milk?\n:quit\n")
    index = home / "indexes" / "demo"
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"building the demo index in {index}" in first.stderr and "embedding" in first.stderr  # progress bar
    assert "answer ·" in first.stdout and "sources" in first.stdout
    built = (index / "manifest.json").stat().st_mtime_ns
    assert json.loads((index / "manifest.json").read_text())["counts"]["by_lang"].keys() == {
        "en", "zh", "fr", "de", "it", "ja"}
    again = _cli(args, empty, home, stdin=":quit\n")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "building" not in again.stderr and (index / "manifest.json").stat().st_mtime_ns == built  # reused
    assert list(empty.iterdir()) == []  # nothing written to the working folder


def test_ask_shows_progress_on_stderr(capsys, tmp_path, monkeypatch, tiny_lm_dir):
    from rich.status import Status

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CALM_RAG_HOME", str(tmp_path / "home"))
    shown: list[str] = []  # every message the status line was given (drawing it depends on timing)
    init, update = Status.__init__, Status.update
    monkeypatch.setattr(Status, "__init__", lambda self, status, *a, **k: (shown.append(str(status)),
                                                                            init(self, status, *a, **k))[1])
    monkeypatch.setattr(Status, "update", lambda self, status=None, **k: (shown.append(str(status)),
                                                                          update(self, status, **k))[1])
    code, out, err = _run(capsys, "ask", "Where do you keep milk?", "--model", str(tiny_lm_dir), "--max-new-tokens",
                          "4", "--json")
    assert code == 0 and json.loads(out)["question"]["lang"] == "en"  # stdout stays the answer alone
    assert any("loading the generator" in m for m in shown) and any("answering" in m for m in shown)


def test_demo_runs_on_package_data_from_any_folder(tmp_path, monkeypatch):
    from calm_rag.pipeline import demo_config, ensure_index

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CALM_RAG_HOME", str(tmp_path / "home"))
    cfg = demo_config(quick=True)
    package = Path(__import__("calm_rag").__file__).parent
    assert all(Path(f).is_file() and Path(f).is_relative_to(package / "data") for f in cfg.data.files.values())
    index = tmp_path / "home" / "indexes" / "demo"
    index.mkdir(parents=True)
    (index / "manifest.json").write_text("{}")  # as built before: reused, not rebuilt
    assert ensure_index(cfg) == index


def test_package_data_ships_the_demo_corpus_and_questions():
    """pyproject's package-data covers every file under calm_rag/data, and the bundled demo recipe is
    indexes/demo.yaml's (only the output folder differs)."""
    import dataclasses
    import tomllib

    from calm_rag.index_recipes import demo_recipe, load_recipe

    repo = Path(__file__).resolve().parent.parent
    patterns = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["calm_rag"]
    shipped = {p for pattern in patterns for p in (repo / "calm_rag").glob(pattern)}
    data = {p for p in (repo / "calm_rag" / "data").rglob("*") if p.is_file()}
    assert data and shipped == data
    # the demo corpus and questions, and packaged adapters (calm_rag/data/adapters/<name>/)
    assert {p.relative_to(repo / "calm_rag" / "data").parts[0] for p in data} == {"demo", "demo_questions", "adapters"}
    assert demo_recipe("x") == dataclasses.replace(load_recipe("demo"), output=Path("x"))
