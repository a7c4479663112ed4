"""DPO training on the tiny models: parameters move, the adapter loads, runs resume, errors are clear."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from calm_rag.config import ConfigError, TrainConfig
from calm_rag.records import PreferencePair, RecordError, write_jsonl
from calm_rag.train import TrainError, _check_tokenized, fit_prompt, load_pairs, train_dpo

CHAT = "<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
FAST = dict(batch_size=2, learning_rate=1e-2, max_length=128)


def _pairs(reflection: bool = False) -> list[PreferencePair]:
    tail = "[Relevant]{}[Fully supported][Utility:5]" if reflection else "{}"
    out = []
    for i, (good, bad) in enumerate([("A. fridge", "B. oven"), ("C. school", "D. car"), ("E. roof", "A. desk")] * 2):
        prompt = CHAT.format(q=f"Question {i}: where is it? A. fridge B. oven C. school D. car E. roof")
        out.append(PreferencePair(prompt=prompt, chosen=tail.format(f"Answer: {good}"),
                                  rejected=tail.format(f"Answer: {bad}"), question_id=str(i), lang="en"))
    return out


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    write_jsonl(path, _pairs())  # full PreferencePair records: the extra columns must be dropped
    return path


@pytest.fixture(scope="module")
def trained(tiny_lm_dir, pairs_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("dpo")
    result = train_dpo(pairs_file, str(tiny_lm_dir), out, TrainConfig(max_steps=2, save_steps=1, **FAST),
                       device="cpu")
    return result, out


def test_dpo_smoke_loss_finite_and_lora_weights_move(trained):
    from safetensors.torch import load_file

    result, out = trained
    assert result.steps == 2 and result.pairs == 6 and result.resumed_from is None
    assert result.adapter_dir == out / "adapter" and result.loss == result.final_loss
    assert result.final_loss is not None and math.isfinite(result.final_loss) and math.isfinite(result.mean_loss)
    tensors = load_file(str(result.adapter / "adapter_model.safetensors"))
    lora_b = {k: v for k, v in tensors.items() if "lora_B" in k}
    assert lora_b, "no LoRA B weights saved"
    assert all(v.abs().sum() > 0 for v in lora_b.values()), "a LoRA B matrix is still zero (its init value)"
    assert (out / "checkpoints" / "checkpoint-2").is_dir()
    assert not (result.adapter / "training_args.bin").exists()  # no pickle in the adapter folder


def test_a_rerun_of_a_finished_training_trains_nothing(trained, tiny_lm_dir, pairs_file, tmp_path):
    """Resuming at the last checkpoint would add a step: a finished adapter with the same pairs and settings is
    returned as it is; other settings (more steps) train on from the checkpoint."""
    _, out = trained
    copy = tmp_path / "dpo"
    shutil.copytree(out, copy)
    weights = (copy / "adapter" / "adapter_model.safetensors").read_bytes()
    cfg = TrainConfig(max_steps=2, save_steps=1, **FAST)
    again = train_dpo(pairs_file, str(tiny_lm_dir), copy, cfg, device="cpu")
    assert (again.steps, again.resumed_from) == (2, None)
    assert (copy / "adapter" / "adapter_model.safetensors").read_bytes() == weights
    more = train_dpo(pairs_file, str(tiny_lm_dir), copy, TrainConfig(max_steps=3, save_steps=1, **FAST), device="cpu")
    assert more.steps == 3 and more.resumed_from is not None and more.resumed_from.endswith("checkpoint-2")


def test_the_adapter_names_its_base(trained, tiny_lm_dir, tmp_path):
    from calm_rag.adapters import adapter_base

    result, _ = trained
    sidecar = json.loads((result.adapter / "calm_rag_adapter.json").read_text())
    assert sidecar["generator"] == str(tiny_lm_dir.resolve()) and sidecar["train"]["lora_r"] == TrainConfig().lora_r
    moved = tmp_path / "moved"
    shutil.copytree(result.adapter, moved)
    assert adapter_base(moved) == str(tiny_lm_dir.resolve())  # wherever the folder goes


def test_adapter_loads_and_changes_logits(trained, tiny_lm_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from calm_rag.models import load_causal_lm

    result, _ = trained
    tok = AutoTokenizer.from_pretrained(str(result.adapter))  # the tokenizer is saved with the adapter
    ids = tok(CHAT.format(q="Question 0: where is it?") + "Answer: A. fridge", return_tensors="pt")
    base = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir)).eval()
    with torch.no_grad():
        before = base(**ids).logits
        tuned = PeftModel.from_pretrained(base, str(result.adapter)).eval()
        after = tuned(**ids).logits
    assert (after - before).abs().max() > 1e-4
    model, _ = load_causal_lm(str(tiny_lm_dir), adapter=str(result.adapter), device="cpu")
    with torch.no_grad():
        assert torch.allclose(model(**ids).logits, after, atol=1e-5)


def test_resume_continues_from_last_checkpoint(trained, tiny_lm_dir, pairs_file, tmp_path):
    _, first = trained
    out = tmp_path / "dpo"
    shutil.copytree(first, out)
    # mark the saved state: if the rerun loads checkpoint-2 the mark is carried into its history
    state_path = out / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    state = json.loads(state_path.read_text())
    assert state["global_step"] == 2
    state["log_history"].append({"resume_mark": 1.0, "step": 2})
    state_path.write_text(json.dumps(state))

    result = train_dpo(pairs_file, str(tiny_lm_dir), out, TrainConfig(max_steps=4, save_steps=2, **FAST),
                       device="cpu")
    assert result.resumed_from is not None and Path(result.resumed_from).name == "checkpoint-2"
    assert result.steps == 4
    final = json.loads((out / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    assert final["global_step"] == 4
    assert any("resume_mark" in e for e in final["log_history"]), "the rerun started over"
    assert sorted(e["step"] for e in final["log_history"] if "loss" in e) == [1, 2, 3, 4]


def test_resume_refuses_checkpoints_of_other_pairs(trained, tiny_lm_dir, tmp_path):
    _, first = trained
    out = tmp_path / "dpo"
    shutil.copytree(first, out)
    other = tmp_path / "other.jsonl"
    write_jsonl(other, _pairs()[:3])
    with pytest.raises(TrainError, match="pairs_sha256"):
        train_dpo(other, str(tiny_lm_dir), out, TrainConfig(max_steps=3, **FAST), device="cpu")


def test_precompute_ref_and_reflection_token_rows_train(tiny_selfrag_lm_dir, tmp_path):
    from safetensors.torch import load_file

    from calm_rag.selfrag import SPECIAL_TOKENS

    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, _pairs(reflection=True))
    cfg = TrainConfig(max_steps=1, precompute_ref=True, **FAST)
    result = train_dpo(pairs, str(tiny_selfrag_lm_dir), tmp_path / "dpo", cfg, device="cpu")
    assert math.isfinite(result.final_loss)
    config = json.loads((result.adapter / "adapter_config.json").read_text())
    assert len(config["trainable_token_indices"]) == len(SPECIAL_TOKENS)
    base = load_file(str(tiny_selfrag_lm_dir / "model.safetensors"))["model.embed_tokens.weight"]
    delta = next(v for k, v in load_file(str(result.adapter / "adapter_model.safetensors")).items()
                 if "trainable_tokens_delta" in k)
    rows = base[config["trainable_token_indices"]]
    assert delta.shape == rows.shape and (delta - rows).abs().max() > 1e-4, "reflection rows did not train"


def test_empty_and_malformed_pairs_files_name_the_problem(tmp_path, tiny_lm_dir):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(RecordError, match=r"empty\.jsonl: no preference pairs"):
        train_dpo(empty, str(tiny_lm_dir), tmp_path / "out", TrainConfig())
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": \n')
    with pytest.raises(RecordError, match=r"bad\.jsonl:2: not valid JSON"):
        load_pairs(bad)
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n\n{"prompt": "p", "chosen": "a"}\n')
    with pytest.raises(RecordError, match=r"missing\.jsonl:3: .*rejected"):
        load_pairs(missing)


def test_fit_prompt_cuts_passage_text_first_then_from_the_left(tiny_lm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_lm_dir))
    head, cue = "### Instruction:\nWhere do you keep milk?\n\n### Response:\n[Retrieval]<paragraph>Fridge\n", "</paragraph>"
    prompt = head + "Milk is kept cold in the fridge. " * 40 + cue

    def n(text):
        return len(tok(text, add_special_tokens=False)["input_ids"])

    short, cut = fit_prompt(prompt, longest_answer=10, tokenizer=tok, max_length=96)
    assert cut and short.startswith(head) and short.endswith(cue)
    assert n(short) + 10 + 1 <= 96
    plain = "Question: where do you keep milk? " * 40 + "Answer:"
    kept, cut = fit_prompt(plain, longest_answer=10, tokenizer=tok, max_length=96)
    assert cut and kept.endswith("Answer:") and n(kept) + 11 <= 96 and plain.endswith(kept)
    assert fit_prompt("short prompt", 5, tok, 96) == ("short prompt", False)


def test_tokenized_guard_catches_double_eos(tiny_lm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_lm_dir))
    eos = tok.eos_token_id
    _check_tokenized([{"prompt_ids": [5, 6], "chosen_ids": [7, eos], "rejected_ids": [8, eos]}], tok)
    with pytest.raises(TrainError, match="chosen does not end in exactly one EOS"):
        _check_tokenized([{"prompt_ids": [5], "chosen_ids": [7, eos, eos], "rejected_ids": [8, eos]}], tok)


def test_train_config_new_fields_validate():
    assert TrainConfig(train_tokens=False).train_tokens == "none"  # YAML "no"
    with pytest.raises(ConfigError, match="train.train_tokens"):
        TrainConfig(train_tokens="maybe")


@pytest.mark.parametrize("reflection", [False, True])
def test_dpo_raises_the_margin_and_the_adapter_disabled_is_the_reference(reflection, tiny_lm_dir,
                                                                         tiny_selfrag_lm_dir, tmp_path):
    """A few DPO steps raise the mean log-prob margin (chosen minus rejected) on the training pairs, and
    the trained model with its adapter disabled (LoRA and trained reflection-token rows) is the base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from calm_rag.train import pair_logprobs, prepare_pairs

    model_dir = tiny_selfrag_lm_dir if reflection else tiny_lm_dir
    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, _pairs(reflection=reflection))
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    rows = load_pairs(pairs)
    assert prepare_pairs(rows, tok, FAST["max_length"])[1] == 0  # no prompt is cut: these rows are what trl sees

    def margin(logprobs):
        return sum(c - r for c, r in logprobs) / len(logprobs)

    reference = pair_logprobs(AutoModelForCausalLM.from_pretrained(str(model_dir)).eval(), tok, rows)
    result = train_dpo(pairs, str(model_dir), tmp_path / "dpo", TrainConfig(max_steps=3, save_steps=10, **FAST),
                       device="cpu")
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(model_dir)), str(result.adapter))
    tuned.eval()
    after = pair_logprobs(tuned, tok, rows)
    assert margin(after) > margin(reference) + 0.1, (margin(reference), margin(after))
    with tuned.disable_adapter():
        back = pair_logprobs(tuned, tok, rows)
    flat = lambda logprobs: [x for pair in logprobs for x in pair]  # noqa: E731
    assert flat(back) == pytest.approx(flat(reference), abs=1e-4)
