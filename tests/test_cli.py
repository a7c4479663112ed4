"""The calm-rag command, in process, on tiny models: every subcommand a user reaches first."""

import json

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
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    out = tmp_path_factory.mktemp("cli") / "idx"
    code = main(["index", "build", "--corpus", str(repo / "corpora" / "demo" / "en.jsonl"),
                 str(repo / "corpora" / "demo" / "zh.jsonl"), "--out", str(out),
                 "--embedder", str(tiny_embedder_path)])
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
    for stage in ("sample", "vote", "pairs"):
        code, out, err = _run(capsys, "calm", stage, "--config", str(cfg), "--run", str(run))
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
    reports = json.loads(out)
    assert list(reports) == ["calm-never", "calm-always"]
    for r in reports.values():
        assert r["langs"] == ["en", "zh"] and r["n_questions"] == 2 and set(r["accuracy"]) == {"en", "zh"}
        assert r["meta"]["adapter"] == str(adapter) and "consistency" in r
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
