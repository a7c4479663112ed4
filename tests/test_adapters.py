"""Adapters by folder or packaged name, the base each names, and the export that packages one."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from calm_rag import adapters
from calm_rag.adapters import adapter_base, adapter_folder, export_adapter, generator_for, model_identity
from calm_rag.models import ModelError
from tests.fixtures.tiny_lm import random_lora


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """An empty package-data folder of adapters, and a cache home of our own."""
    folder = tmp_path / "package_adapters"
    folder.mkdir()
    monkeypatch.setattr(adapters, "PACKAGED_ADAPTERS_DIR", folder)
    monkeypatch.setenv("CALM_RAG_HOME", str(tmp_path / "home"))
    return folder


def test_a_packaged_name_resolves_like_a_folder_and_unknown_names_list_the_packaged(shipped, tmp_path):
    (shipped / "calm-demo").mkdir()
    (shipped / "calm-demo" / "adapter_config.json").write_text("{}")
    (shipped / "not-an-adapter").mkdir()  # no adapter_config.json: not listed
    assert adapters.packaged_adapters() == {"calm-demo": shipped / "calm-demo"}
    assert adapter_folder("calm-demo") == shipped / "calm-demo"
    assert adapter_folder(str(tmp_path)) == tmp_path  # a folder is a folder
    with pytest.raises(ModelError, match=r"--adapter calm-nope: no such adapter folder and no packaged adapter of "
                                         r"that name \(packaged: calm-demo\)"):
        adapter_folder("calm-nope")


def test_an_adapter_names_its_base_and_a_mismatched_model_is_refused(shipped, tmp_path):
    from calm_rag.models import model_dir

    folder = tmp_path / "ad"
    folder.mkdir()
    # peft's base path to a packaged model's cache folder reads as the packaged name
    cache = model_dir("qwen2.5-coder-1.5b-instruct")
    cache.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(cache)}))
    assert adapter_base(folder) == "qwen2.5-coder-1.5b-instruct"
    assert model_identity(str(cache)) == "qwen2.5-coder-1.5b-instruct"
    assert generator_for(None, str(folder), "qwen2.5-coder-0.5b-instruct") == "qwen2.5-coder-1.5b-instruct"
    assert generator_for("qwen2.5-coder-1.5b-instruct", str(folder), "x") == "qwen2.5-coder-1.5b-instruct"
    assert generator_for(None, None, "qwen2.5-coder-0.5b-instruct") == "qwen2.5-coder-0.5b-instruct"
    with pytest.raises(ModelError, match=r"was trained on qwen2.5-coder-1.5b-instruct, not "
                                         r"qwen2.5-coder-0.5b-instruct; pass --model qwen2.5-coder-1.5b-instruct"):
        generator_for("qwen2.5-coder-0.5b-instruct", str(folder), "x")
    # the sidecar calm-rag writes wins over peft's field
    (folder / adapters.SIDECAR).write_text(json.dumps({"generator": "org/hub-model"}))
    assert adapter_base(folder) == "org/hub-model"
    (folder / adapters.SIDECAR).write_text("{broken")
    with pytest.raises(ModelError, match=r"calm_rag_adapter.json: not a readable JSON object"):
        adapter_base(folder)


def test_exported_adapter_is_fp16_small_names_its_base_and_gives_the_same_answers(shipped, tmp_path, tiny_lm_dir):
    import torch
    from safetensors.torch import load_file

    from calm_rag.config import GenerateConfig
    from calm_rag.generate import load_generator

    run_adapter = random_lora(tiny_lm_dir, tmp_path / "run_adapter", targets=("q_proj", "v_proj"), r=2)
    out = export_adapter(run_adapter, shipped / "calm-tiny", str(tiny_lm_dir), metrics={"consistency": 0.5})
    weights = load_file(str(out / "adapter_model.safetensors"))
    assert weights and all(t.dtype == torch.float16 for t in weights.values())
    original = load_file(str(run_adapter / "adapter_model.safetensors"))
    assert set(weights) == set(original)
    assert all(torch.allclose(weights[k].float(), original[k], atol=1e-2) for k in weights)
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                     "calm_rag_adapter.json"]  # no tokenizer: the base's is used
    sidecar = json.loads((out / "calm_rag_adapter.json").read_text())
    assert sidecar == {"generator": str(tiny_lm_dir.resolve()), "metrics": {"consistency": 0.5}}
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_lm_dir.resolve())
    # loaded by its packaged name on the transformers backend: the same greedy text as the fp32 run adapter
    cfg = GenerateConfig(n=1, temperature=0.0, max_new_tokens=8, min_new_tokens=8)
    by_name = load_generator(generator_for(None, "calm-tiny", "unused"), backend="transformers", adapter="calm-tiny",
                             device="cpu")
    by_folder = load_generator(str(tiny_lm_dir), backend="transformers", adapter=str(run_adapter), device="cpu")
    base = load_generator(str(tiny_lm_dir), backend="transformers", device="cpu")
    prompts = [by_name.chat_prompt("Where do you keep milk? A. fridge B. oven")]
    probs = [g.next_token_probs(prompts, ["A", "B"])[0] for g in (by_name, by_folder, base)]
    ratio = [p["A"] / p["B"] for p in probs]  # the letters' odds, whatever their absolute size
    assert abs(ratio[0] / ratio[1] - 1) < 1e-2  # fp16 rounding only
    assert abs(ratio[0] / ratio[2] - 1) > 5e-2  # and the adapter does something
    assert by_name.generate(prompts, cfg) == by_folder.generate(prompts, cfg)
    # a second export over the first replaces it whole, through a temp folder
    export_adapter(run_adapter, out, str(tiny_lm_dir))
    assert json.loads((out / "calm_rag_adapter.json").read_text()) == {"generator": str(tiny_lm_dir.resolve())}
    assert [p.name for p in shipped.iterdir()] == ["calm-tiny"]


def test_ship_adapter_writes_the_run_into_the_package_and_refuses_oversize(shipped, tmp_path, tiny_lm_dir):
    """scripts/ship_adapter.py: a run's adapter with its config and evaluation; over the size limit, nothing stays."""
    from tests.fixtures.scripts import load_script

    run = tmp_path / "runs" / "calm-tiny"
    random_lora(tiny_lm_dir, run / "train" / "adapter", targets=("q_proj", "v_proj"), r=2)
    config = {"model": {"generator": str(tiny_lm_dir)}, "calm": {"languages": ["en", "zh"]}}
    (run / "manifest.json").write_text(json.dumps({"config": config, "versions": {"peft": "x"}}))
    report = {"langs": ["en", "zh"], "accuracy": {"en": 0.5, "zh": 0.25}, "majority_accuracy": {"en": 0.5, "zh": 0.25},
              "vote_accuracy": 0.5, "consistency": 0.75, "parse_rate": {"en": 1.0, "zh": 1.0}, "n_questions": 4,
              "n_samples": 8, "n_languages": 2, "samples_per_lang": {"en": 4, "zh": 4}}
    metrics = tmp_path / "calm-tiny.json"
    metrics.write_text(json.dumps({"reports": {"calm-never": report}, "deltas": {
        "calm-never vs base-never": {"label": "CALM - base", "metrics": {"consistency": [0.25, 0.0, 0.5]}},
        "base-always vs base-never": {"label": "retrieval", "metrics": {}}}}))
    ship = load_script("ship_adapter")
    assert ship.main([str(run), "--name", "calm-tiny", "--metrics", str(metrics), "--into", str(shipped)]) == 0
    sidecar = json.loads((shipped / "calm-tiny" / "calm_rag_adapter.json").read_text())
    assert sidecar["config"] == config and sidecar["run"] == "calm-tiny"
    assert sidecar["evaluation"]["calm-never"]["mean_accuracy"] == pytest.approx(0.375)  # (0.5 + 0.25) / 2
    assert sidecar["evaluation"]["calm-never"]["consistency"] == 0.75
    assert list(sidecar["deltas"]) == ["calm-never vs base-never"]  # CALM - base only
    assert generator_for(None, "calm-tiny", "x") == str(tiny_lm_dir.resolve())
    # before its evaluation: shipped with the sidecar saying so; shipping again with --metrics fills it in
    assert ship.main([str(run), "--name", "calm-early", "--into", str(shipped)]) == 0
    early = json.loads((shipped / "calm-early" / "calm_rag_adapter.json").read_text())
    assert early["evaluation"] is None and early["deltas"] is None and early["config"] == config
    # a training cut short: a saved checkpoint ships, and the sidecar says at which step
    import torch
    from safetensors.torch import load_file

    random_lora(tiny_lm_dir, run / "train" / "checkpoints" / "checkpoint-20", targets=("q_proj", "v_proj"), r=2, seed=7)
    assert ship.main([str(run), "--name", "calm-cut", "--checkpoint", "20", "--into", str(shipped)]) == 0
    assert json.loads((shipped / "calm-cut" / "calm_rag_adapter.json").read_text())["steps"] == 20
    assert (load_file(str(shipped / "calm-cut" / "adapter_model.safetensors")).keys()
            == load_file(str(run / "train" / "checkpoints" / "checkpoint-20" / "adapter_model.safetensors")).keys())
    assert not any(torch.equal(a, load_file(str(shipped / "calm-early" / "adapter_model.safetensors"))[k])
                   for k, a in load_file(str(shipped / "calm-cut" / "adapter_model.safetensors")).items())
    # a run folder restored from the shipped adapter (its manifest has no train stage) ships it again with its step
    restored = tmp_path / "restored" / "calm-tiny"
    shutil.copytree(shipped / "calm-cut", restored / "train" / "adapter")
    shutil.copy(run / "manifest.json", restored / "manifest.json")
    assert ship.main([str(restored), "--name", "calm-again", "--metrics", str(metrics), "--into", str(shipped)]) == 0
    again = json.loads((shipped / "calm-again" / "calm_rag_adapter.json").read_text())
    assert again["steps"] == 20 and again["evaluation"]["calm-never"]["consistency"] == 0.75
    assert ship.main([str(run), "--name", "calm-none", "--checkpoint", "25", "--into", str(shipped)]) == 2
    assert not (shipped / "calm-none").exists()
    ship.LIMIT = 1024  # a folder over the limit is refused and removed
    assert ship.main([str(run), "--name", "calm-big", "--metrics", str(metrics), "--into", str(shipped)]) == 2
    assert not (shipped / "calm-big").exists()


@pytest.mark.slow
def test_the_shipped_calm_model_runs_on_its_own_base(capsys, tmp_path):
    """calm-xcsqa-6lang, the project's CALM model, as it ships: fp16 LoRA under 5 MB trained by the 6-language
    recipe; `calm eval --adapter calm-xcsqa-6lang` picks the 1.5B base from the adapter's config (no --model),
    prints the set-level metrics as top-level JSON keys, and the adapter changes what the base model predicts."""
    from pathlib import Path

    from safetensors import safe_open

    from calm_rag.cli import main
    from calm_rag.config_files import load_run_config
    from calm_rag.generate import load_generator

    repo = Path(__file__).resolve().parent.parent
    folder = adapters.packaged_adapters()["calm-xcsqa-6lang"]
    assert sum(f.stat().st_size for f in folder.iterdir()) < 5 * 2**20
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float16"}
    acfg = json.loads((folder / "adapter_config.json").read_text())
    recipe = load_run_config(repo / "scripts" / "runs" / "calm-xcsqa-6lang.yaml")
    assert (acfg["r"], sorted(acfg["target_modules"])) == (recipe.train.lora_r, sorted(recipe.train.lora_targets.split(",")))
    sidecar = json.loads((folder / "calm_rag_adapter.json").read_text())
    assert sidecar["generator"] == "qwen2.5-coder-1.5b-instruct" and sidecar["run"] == "calm-xcsqa-6lang"
    assert sidecar["config"]["train"]["max_steps"] == recipe.train.max_steps and 1 <= sidecar["steps"] <= recipe.train.max_steps
    assert sidecar["config"]["generate"]["n"] == recipe.generate.n

    data = repo / "tests" / "data" / "qa" / "xcsr_dev.jsonl"
    code = main(["calm", "eval", "--data", str(data), "--adapter", "calm-xcsqa-6lang", "--retrieval", "never",
                 "--max-questions", "2", "--max-new-tokens", "8", "--out", str(tmp_path / "ev"), "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    result = json.loads(out.out)
    report = result["reports"]["calm-never"]
    assert report["meta"]["model"] == "qwen2.5-coder-1.5b-instruct" and "calm-xcsqa-6lang" in str(report["meta"]["adapter"])
    assert result["consistency"] == report["consistency"]
    assert result["mean_accuracy"] == pytest.approx(sum(report["accuracy"].values()) / len(report["accuracy"]))

    prompt = ["Question: Where would you put a plate after washing it?\nA. cupboard\nB. table\nC. sink\nAnswer:"]
    letters = [" A", " B", " C"]  # after "Answer:" the model writes a space first; these carry the mass
    base = load_generator("qwen2.5-coder-1.5b-instruct", backend="llama.cpp").next_token_probs(prompt, letters)[0]
    calm = load_generator("qwen2.5-coder-1.5b-instruct", backend="llama.cpp",
                          adapter="calm-xcsqa-6lang").next_token_probs(prompt, letters)[0]
    assert sum(base.values()) > 0.5  # a prompt where the letters are what the model predicts
    # the LoRA is applied, not dropped (measured: 0.038 nats at most, the step-15 adapter)
    assert max(abs(math.log(base[k]) - math.log(calm[k])) for k in letters) > 0.005
