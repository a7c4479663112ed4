"""DPO with trl and peft on the generator itself, and the SFT that distillation trains its student with.

A LoRA adapter is trained with trl's `DPOTrainer`; the reference model is the same base with
the adapter disabled (`ref_model=None` with a peft config, trl's own way), so only one copy of
the weights is held. Devices are left to the Trainer/accelerate, so the same call runs on CPU,
one GPU, or several GPUs under `accelerate launch`.

Prompts are plain, already formatted strings (the generator's own prompt, chat template
included), so trl does not apply a chat template again; it appends EOS to chosen/rejected. The
passages live in the prompt, so a prompt that would push prompt + answer past `max_length` is
shortened here, before trl sees it: first the text of the last `<paragraph>` is cut from its end
(the question, the passage title and the response cue survive), then, if that is not enough,
the prompt is cut from the left (its end is kept). trl's own truncation would cut the answer
instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import selfrag
from .config import ConfigError, DistillConfig, TrainConfig
from .records import RecordError, atomic_write_text, file_sha256, read_jsonl

logger = logging.getLogger(__name__)

COLUMNS = ("prompt", "chosen", "rejected")
PARAGRAPH_OPEN, PARAGRAPH_CLOSE = "<paragraph>", "</paragraph>"
SLACK = 2  # tokens kept free: the answer may tokenize a little differently after the prompt


class TrainError(ValueError):
    """Training cannot start as asked (e.g. a checkpoint from another run); the message says the fix."""


@dataclass(frozen=True)
class TrainResult:
    adapter: Path  # loadable with peft.PeftModel.from_pretrained(base, adapter)
    steps: int  # optimizer steps done in total (resumed ones included)
    final_loss: float | None
    mean_loss: float | None  # mean of the logged step losses over the whole run
    seconds: float  # wall time of this call
    metrics: dict[str, float] = field(default_factory=dict)  # the last logged DPO metrics
    resumed_from: str | None = None  # the checkpoint this call resumed from
    pairs: int = 0
    truncated_prompts: int = 0

    @property
    def loss(self) -> float | None:  # the name pipeline.py reads
        return self.final_loss

    @property
    def adapter_dir(self) -> Path:  # the name pipeline.py reads
        return self.adapter


# ---------------------------------------------------------------- pairs


def load_pairs(path: str | Path) -> list[dict[str, str]]:
    """prompt/chosen/rejected rows from a JSONL of PreferencePair (or trl-only) records; other keys dropped."""
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"{path}: pairs file not found; build it first (calm-rag pairs)")
    # read_jsonl skips blank lines; map each record back to its line for the messages below
    linenos = [i for i, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1) if line.strip()]
    rows = []
    for lineno, rec in zip(linenos, read_jsonl(path)):
        bad = [c for c in COLUMNS if not isinstance(rec.get(c), str)]
        if bad:
            raise RecordError(f"{path}:{lineno}: field(s) {bad} missing or not a string; "
                              f"each line needs prompt, chosen and rejected")
        if not rec["chosen"].strip() or not rec["rejected"].strip():
            raise RecordError(f"{path}:{lineno}: empty chosen or rejected text; drop that pair")
        rows.append({c: rec[c] for c in COLUMNS})
    if not rows:
        raise RecordError(f"{path}: no preference pairs in the file; nothing to train on "
                          f"(did every question agree across languages?)")
    return rows


def _adds_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def _adds_eos(tokenizer) -> bool:
    eos = tokenizer.eos_token_id
    return eos is not None and tokenizer("a")["input_ids"][-1:] == [eos]


def _cut(prompt: str, offsets: list[tuple[int, int]], excess: int) -> str:
    """Drop `excess` tokens: from the end of the last passage's text first, then from the left."""
    open_at = prompt.rfind(PARAGRAPH_OPEN)
    close_at = prompt.find(PARAGRAPH_CLOSE, open_at) if open_at >= 0 else -1
    if close_at >= 0:
        start = open_at + len(PARAGRAPH_OPEN)
        inside = [i for i, (a, b) in enumerate(offsets) if a >= start and b <= close_at]
        if inside:
            drop = inside[-min(excess, len(inside)):]
            return prompt[:offsets[drop[0]][0]] + prompt[close_at:]  # the caller re-tokenizes and calls again
    return prompt[offsets[min(excess, len(offsets) - 1)][0]:]


def fit_prompt(prompt: str, longest_answer: int, tokenizer, max_length: int) -> tuple[str, bool]:
    """Shorten `prompt` so prompt + answer (+ EOS, BOS) fit in `max_length` tokens; returns (prompt, cut?)."""
    reserve = longest_answer + 1 + int(_adds_bos(tokenizer)) + SLACK
    budget = max(max_length - reserve, max_length // 4)  # an over-long answer is cut by trl instead
    cut = False
    for _ in range(8):
        enc = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
        excess = len(enc["input_ids"]) - budget
        if excess <= 0:
            return prompt, cut
        prompt, cut = _cut(prompt, enc["offset_mapping"], excess), True
    raise TrainError(f"could not shorten a prompt to {budget} tokens; raise train.max_length")


def prepare_pairs(rows: list[dict[str, str]], tokenizer, max_length: int) -> tuple[list[dict[str, str]], int]:
    """Rows ready for trl: no BOS text trl would add again, prompts that leave room for the answer."""
    if _adds_eos(tokenizer):
        logger.warning("the tokenizer appends EOS to every text; trl adds one to chosen/rejected too, "
                       "so prompts will end in EOS: check the tokenizer's post-processor")
    bos = tokenizer.bos_token if _adds_bos(tokenizer) else None
    out, n_cut = [], 0
    for row in rows:
        prompt = row["prompt"]
        if bos and prompt.startswith(bos):  # the tokenizer adds it; a chat template may have written it too
            prompt = prompt[len(bos):]
        longest = max(len(tokenizer(row[c], add_special_tokens=False)["input_ids"]) for c in ("chosen", "rejected"))
        prompt, was_cut = fit_prompt(prompt, longest, tokenizer, max_length)
        n_cut += was_cut
        out.append({"prompt": prompt, "chosen": row["chosen"], "rejected": row["rejected"]})
    if n_cut:
        logger.warning("%d of %d prompts were longer than train.max_length=%d allows and were shortened "
                       "(passage text first, then from the left)", n_cut, len(rows), max_length)
    return out, n_cut


def pair_logprobs(model, tokenizer, rows: list[dict[str, str]]) -> list[tuple[float, float]]:
    """(chosen, rejected) summed log-probabilities of each row's answers after its prompt, tokenized as trl
    tokenizes them (prompt and answer apart, BOS where the tokenizer adds one, EOS after the answer).

    DPO raises the margin chosen minus rejected relative to the reference (the adapter disabled).
    """
    import torch

    bos = [tokenizer.bos_token_id] if _adds_bos(tokenizer) else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for row in rows:
            prompt = bos + tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
            pair = []
            for col in ("chosen", "rejected"):
                ids = prompt + tokenizer(row[col], add_special_tokens=False)["input_ids"] + eos
                x = torch.tensor([ids], device=device)
                logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), dim=-1)
                targets = x[0, 1:, None]
                pair.append(float(logp.gather(-1, targets)[len(prompt) - 1:].sum()))
            out.append((pair[0], pair[1]))
    return out


# ---------------------------------------------------------------- model pieces


def reflection_token_ids(tokenizer) -> list[int]:
    """Ids of the Self-RAG reflection tokens and paragraph tags that the tokenizer has as single tokens."""
    from .selfrag import SPECIAL_TOKENS

    vocab = tokenizer.get_vocab()
    return sorted(vocab[t] for t in SPECIAL_TOKENS if t in vocab)


def lora_config(cfg: TrainConfig, model, tokenizer):
    """A peft LoraConfig for a causal LM; optionally also trains the reflection tokens' embedding rows."""
    from peft import LoraConfig

    targets: str | list[str] = cfg.lora_targets.strip()
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    token_ids = reflection_token_ids(tokenizer) if cfg.train_tokens != "none" else []
    if cfg.train_tokens == "reflection" and not token_ids:
        raise TrainError("train.train_tokens=reflection but the tokenizer has no Self-RAG reflection tokens; "
                         "use train_tokens=auto or none for this model")
    trainable: list[int] | dict[str, list[int]] | None = None
    if token_ids:
        tied = model.get_output_embeddings() is None or (
            model.get_output_embeddings().weight is model.get_input_embeddings().weight)
        in_name = _module_name(model, model.get_input_embeddings())
        # the output rows matter most (the model writes and scores these tokens); tied ones follow the input rows
        trainable = token_ids if tied else {in_name: token_ids,
                                            _module_name(model, model.get_output_embeddings()): token_ids}
        logger.info("training the embedding rows of %d reflection tokens (%s embeddings)",
                    len(token_ids), "tied" if tied else "input and output")
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM", trainable_token_indices=trainable)


def _module_name(model, module) -> str:
    for name, mod in model.named_modules():
        if mod is module:
            return name.rsplit(".", 1)[-1]
    raise TrainError(f"{type(model).__name__}: embedding module not found by name")


def _dpo_args(cfg: TrainConfig, checkpoints: Path, device: str | None):
    import torch
    from trl import DPOConfig

    if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError(f"device={device!r} but no CUDA GPU is visible; use device=cpu")
    if device not in (None, "cpu", "cuda"):
        logger.warning("device=%s: the Trainer picks the GPU; use CUDA_VISIBLE_DEVICES to choose one", device)
    cuda = device != "cpu" and torch.cuda.is_available()
    return DPOConfig(
        output_dir=str(checkpoints),
        beta=cfg.beta,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        max_length=cfg.max_length,
        truncation_mode="keep_start",  # prompts are already shortened; this only cuts over-long answers
        precompute_ref_log_probs=cfg.precompute_ref,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=1,
        report_to="none",
        push_to_hub=False,
        disable_tqdm=True,
        use_cpu=not cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        fp16=False,
        activation_checkpointing=cuda,  # saves GPU memory; on CPU it only costs time
        disable_dropout=False,  # keeps train.lora_dropout; the reference (adapter off) has no LoRA dropout
    )


def _log_callback():
    from transformers import TrainerCallback

    class LogCallback(TrainerCallback):
        """Trainer logs go to python logging (the Trainer's own printer uses print)."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                shown = {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in logs.items()}
                logger.info("step %d/%d %s", state.global_step, state.max_steps, shown)

    return LogCallback()


# ---------------------------------------------------------------- training


def check_run(out_dir: Path, run: dict[str, Any], resuming: bool) -> None:
    """Refuse to resume checkpoints made from other pairs, another model or another adapter shape."""
    path = out_dir / "run.json"
    if resuming and path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        diff = sorted(k for k in run if old.get(k) != run[k])
        if diff:
            raise TrainError(f"{out_dir}/checkpoints were made with different {diff}; pass resume=False "
                             f"(--no-resume) to start over, or use another output folder")


def train_dpo(pairs_path: str | Path, model_spec: str, out_dir: str | Path, cfg: TrainConfig,
              resume: bool = True, device: str | None = None) -> TrainResult:
    """Train a LoRA adapter with DPO on `pairs_path`; the adapter lands in `out_dir/adapter`.

    Checkpoints go to `out_dir/checkpoints` every `cfg.save_steps` steps; with `resume`, a rerun
    continues from the last one (resume=False deletes them and starts over).
    """
    from accelerate import PartialState
    from datasets import load_dataset
    from transformers.trainer_utils import get_last_checkpoint
    from trl import DPOTrainer

    from .adapters import trained_with, write_sidecar
    from .models import load_causal_lm

    start = time.time()
    pairs_path, out_dir = Path(pairs_path), Path(out_dir)
    state = PartialState()
    rows = load_pairs(pairs_path)  # every process validates, so a bad file fails everywhere
    run = {"pairs_sha256": file_sha256(pairs_path), "model": model_spec, "lora_r": cfg.lora_r,
           "lora_targets": cfg.lora_targets, "train_tokens": cfg.train_tokens, "max_length": cfg.max_length}
    adapter = out_dir / "adapter"
    done = trained_with(adapter, run, json.loads(json.dumps(dataclasses.asdict(cfg)))) if resume else None
    if done is not None:  # resuming at the last checkpoint would train one step more than asked
        logger.info("%s is already trained on these pairs with these settings (%d steps); nothing to do",
                    adapter, done["steps"])
        return TrainResult(adapter=adapter, steps=done["steps"], final_loss=done.get("final_loss"),
                           mean_loss=done.get("mean_loss"), seconds=done.get("seconds", time.time() - start),
                           pairs=len(rows))  # the training's own time, not this call's
    model, tokenizer = load_causal_lm(model_spec, device="cpu", dtype=load_dtype(device))
    checkpoints = out_dir / "checkpoints"
    last = get_last_checkpoint(str(checkpoints)) if resume and checkpoints.is_dir() else None
    check_run(out_dir, run, resuming=last is not None)

    prepared_path, n_cut = out_dir / "pairs.trl.jsonl", 0
    with state.main_process_first():
        if state.is_main_process:
            if not resume and checkpoints.exists():
                shutil.rmtree(checkpoints)
            out_dir.mkdir(parents=True, exist_ok=True)
            prepared, n_cut = prepare_pairs(rows, tokenizer, cfg.max_length)
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in prepared)
            if not prepared_path.is_file() or prepared_path.read_text(encoding="utf-8") != text:
                atomic_write_text(prepared_path, text)  # unchanged file: datasets' cache (and trl's) is reused
            atomic_write_text(out_dir / "run.json", json.dumps(run, indent=2) + "\n")
        # a file-backed dataset gives trl stable cache files: precomputed reference log-probs are
        # shared between processes and reused on resume
        dataset = load_dataset("json", data_files=str(prepared_path), split="train",
                               cache_dir=str(out_dir / "cache"))

    args = _dpo_args(cfg, checkpoints, device)
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=dataset,
                         processing_class=tokenizer, peft_config=lora_config(cfg, model, tokenizer))
    use_logging(trainer)
    expose_head_bias(trainer.model)
    _check_tokenized(trainer.train_dataset, tokenizer)
    if last:
        logger.info("resuming DPO from %s", last)
    output = trainer.train(resume_from_checkpoint=last)

    tmp, old = out_dir / ".adapter.tmp", out_dir / ".adapter.old"
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]  # a NaN stays visible
    final_loss, mean_loss = (losses[-1], sum(losses) / len(losses)) if losses else (None, None)
    if trainer.is_world_process_zero():
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))  # every process (collective under FSDP/DeepSpeed); only the main one writes
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(tmp))
        (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle; the adapter folder holds none
        # the adapter names its base wherever it is moved, and what made it (a rerun then trains nothing)
        write_sidecar(tmp, model_spec, train=run, train_config=json.loads(json.dumps(dataclasses.asdict(cfg))),
                      steps=trainer.state.global_step, final_loss=final_loss, mean_loss=mean_loss,
                      seconds=round(time.time() - start, 1))
        shutil.rmtree(old, ignore_errors=True)
        if adapter.exists():
            os.rename(adapter, old)
        os.rename(tmp, adapter)
        shutil.rmtree(old, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()

    last_log = next((e for e in reversed(trainer.state.log_history) if "loss" in e), {})
    metrics = {k: float(v) for k, v in last_log.items() if isinstance(v, (int, float)) and k not in ("step", "epoch")}
    metrics.update({k: float(v) for k, v in output.metrics.items() if isinstance(v, (int, float))})
    result = TrainResult(adapter=adapter, steps=trainer.state.global_step, final_loss=final_loss, mean_loss=mean_loss,
                         seconds=time.time() - start, metrics=metrics, resumed_from=last,
                         pairs=len(rows), truncated_prompts=n_cut)
    logger.info("DPO done: %d steps, final loss %s, adapter %s", result.steps, result.final_loss, adapter)
    return result


def load_dtype(device: str | None):
    import torch

    if device != "cpu" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16  # LoRA weights stay fp32 (peft upcasts them); the frozen base halves its memory
    return torch.float32


def use_logging(trainer) -> None:
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(_log_callback())


def expose_head_bias(model) -> None:
    """trl's fused LM head reads `lm_head.bias`, which peft's TrainableTokensWrapper (trainable
    reflection tokens) does not forward; give the wrapper its base layer's bias (None for these models)."""
    from peft.utils.other import TrainableTokensWrapper

    head = model.get_output_embeddings()
    if isinstance(head, TrainableTokensWrapper) and "bias" not in head.__dict__:
        object.__setattr__(head, "bias", getattr(head.original_module, "bias", None))


def _check_tokenized(dataset, tokenizer) -> None:
    """Guard what trl built: one BOS at most at the prompt start, each answer ends in exactly one EOS."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    for i, ex in enumerate(dataset):
        if bos is not None and ex["prompt_ids"][:2] == [bos, bos]:
            raise TrainError(f"pair {i}: the prompt starts with two BOS tokens; drop the BOS text from prompts")
        for col in ("chosen_ids", "rejected_ids"):
            ids = ex[col]
            if eos is not None and (not ids or ids[-1] != eos or ids[-2:] == [eos, eos]):
                raise TrainError(f"pair {i}: {col[:-4]} does not end in exactly one EOS "
                                 f"({tokenizer.decode(ids[-3:])!r}); check the tokenizer's EOS settings")


# ---------------------------------------------------------------- SFT (the distilled Self-RAG student)


def add_reflection_tokens(model, tokenizer) -> list[int]:
    """Make the reflection tokens and paragraph tags special single tokens; returns their ids.

    New rows start as the mean of the rows of the pieces the string used to split into (input
    and, when untied, output embeddings), so `[Relevant]` starts near "[", "Relevant", "]". A
    tokenizer that already has them is left alone. Spare embedding rows (the hub's Qwen2.5 has
    some) are used before the matrix is resized.
    """
    import torch

    vocab = tokenizer.get_vocab()
    new = [t for t in selfrag.SPECIAL_TOKENS if t not in vocab]
    if new:
        pieces = {t: tokenizer(t, add_special_tokens=False)["input_ids"] for t in new}
        tokenizer.add_special_tokens({"extra_special_tokens": new}, replace_extra_special_tokens=False)
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        emb = model.get_input_embeddings().weight
        head = model.get_output_embeddings()
        untied = head is not None and head.weight is not emb
        with torch.no_grad():
            for t in new:
                idx, src = tokenizer.convert_tokens_to_ids(t), pieces[t]
                emb[idx] = emb[src].mean(0)
                if untied:
                    head.weight[idx] = head.weight[src].mean(0)
        logger.info("added %d Self-RAG tokens to the tokenizer (%d now)", len(new), len(tokenizer))
    ids = [tokenizer.convert_tokens_to_ids(t) for t in selfrag.SPECIAL_TOKENS]
    for t, i in zip(selfrag.SPECIAL_TOKENS, ids):
        if tokenizer(t, add_special_tokens=False)["input_ids"] != [i]:
            raise ValueError(f"{t!r} does not encode as its own single token; the tokenizer cannot hold it")
    return ids


def encode_example(prompt: str, output: str, tokenizer, max_length: int) -> dict[str, list[int]] | None:
    """Token ids and labels of prompt + output + EOS; labels are -100 on the prompt and on the
    passage text strictly inside <paragraph>..</paragraph> (Self-RAG's mask: the tags are learned).

    An example over `max_length` loses passage tokens from the passage's end (they carry no loss);
    None when it still does not fit.
    """
    text = prompt + output
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    masked = [(0, len(prompt))]
    open_at = output.find(selfrag.PARAGRAPH_OPEN)
    if open_at >= 0:
        start = len(prompt) + open_at + len(selfrag.PARAGRAPH_OPEN)
        close = text.find(selfrag.PARAGRAPH_CLOSE, start)
        masked.append((start, close if close >= 0 else len(text)))
    labels, inside = [], []
    for k, (tid, (a, b)) in enumerate(zip(ids, offsets)):
        hit = [(lo, hi) for lo, hi in masked if a < hi and b > lo]
        if hit and not all(lo <= a and b <= hi for lo, hi in hit):
            raise ValueError(f"token {k} ({text[a:b]!r}) straddles a loss-mask boundary; the prompt must end "
                             f"where a reflection token starts")
        labels.append(-100 if hit else tid)
        if len(masked) > 1 and hit and hit[0] == masked[1]:
            inside.append(k)
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; set tokenizer.eos_token before training")
    ids.append(tokenizer.eos_token_id)
    labels.append(tokenizer.eos_token_id)
    excess = len(ids) - max_length
    if excess > 0:
        if excess > len(inside):
            return None
        drop = set(inside[len(inside) - excess:])
        ids = [t for k, t in enumerate(ids) if k not in drop]
        labels = [t for k, t in enumerate(labels) if k not in drop]
    return {"input_ids": ids, "labels": labels}


@dataclass(frozen=True)
class SftResult:
    model_dir: Path  # merged model + tokenizer
    steps: int
    final_loss: float | None
    examples: int
    dropped: int  # examples not used: empty answer, wrong letter (only_correct) or too long
    seconds: float
    resumed_from: str | None = None


def _sft_args(cfg: DistillConfig, checkpoints: Path):
    import torch
    from trl import SFTConfig

    if cfg.device is not None and cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"distill.device={cfg.device!r} but no CUDA GPU is visible; use device: cpu")
    cuda = cfg.device != "cpu" and torch.cuda.is_available()
    return SFTConfig(
        output_dir=str(checkpoints), learning_rate=cfg.learning_rate, max_steps=cfg.steps,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        max_length=cfg.max_length, save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=2,
        seed=cfg.seed, data_seed=cfg.seed, logging_steps=1, report_to="none", push_to_hub=False,
        disable_tqdm=True, use_cpu=not cuda, bf16=cuda and torch.cuda.is_bf16_supported(), fp16=False,
        activation_checkpointing=cuda,  # saves GPU memory; on a CPU it only costs time
        lr_scheduler_type="cosine", warmup_steps=min(10, cfg.steps // 10),
    )


def _train_config(cfg: DistillConfig) -> TrainConfig:
    """The LoRA part of a TrainConfig, so lora_config builds the adapter the same way as for DPO."""
    return TrainConfig(lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                       lora_targets=cfg.lora_targets, train_tokens="reflection", max_length=cfg.max_length,
                       learning_rate=cfg.learning_rate, seed=cfg.seed)


def train_sft(examples: Sequence[tuple[str, str]], cfg: DistillConfig, out_dir: str | Path, *, resume: bool = True,
              unusable: int = 0, source: str = "the examples") -> SftResult:
    """LoRA SFT of cfg.model on (prompt, output) examples, reflection tokens added and trainable; the merged
    model lands in `out_dir/model`. `unusable`: examples the caller left out (counted as dropped)."""
    from datasets import load_dataset
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTTrainer

    from .models import load_causal_lm, save_model_folder

    start = time.time()
    out_dir = Path(out_dir)
    sft = out_dir / "sft"
    model, tokenizer = load_causal_lm(cfg.model, device="cpu", dtype=load_dtype(cfg.device))
    token_ids = add_reflection_tokens(model, tokenizer)
    rows, dropped = [], unusable
    for prompt, output in examples:
        row = encode_example(prompt, output, tokenizer, cfg.max_length)
        if row is None:
            dropped += 1
        else:
            rows.append(row)
    if not rows:
        raise RecordError(f"{source}: none of {len(examples) + unusable} examples is usable (empty answers"
                          f"{', wrong letters' if cfg.only_correct else ''} or over max_length); label more questions")
    text = "".join(json.dumps(r) + "\n" for r in rows)
    run = {"examples_sha256": hashlib.sha256(text.encode()).hexdigest(), "model": cfg.model, "lora_r": cfg.lora_r,
           "lora_alpha": cfg.lora_alpha, "lora_targets": cfg.lora_targets, "max_length": cfg.max_length}
    target = out_dir / "model"
    done = json.loads((target / "distill.json").read_text()) if (target / "distill.json").is_file() else {}
    if resume and done.get("steps") == cfg.steps and all(done.get(k) == v for k, v in run.items()):
        logger.info("%s is already trained on these examples for %d steps; nothing to do", target, cfg.steps)
        return SftResult(model_dir=target, steps=cfg.steps, final_loss=done.get("final_loss"), examples=len(rows),
                         dropped=dropped, seconds=time.time() - start, resumed_from=None)
    checkpoints = sft / "checkpoints"
    last = get_last_checkpoint(str(checkpoints)) if resume and checkpoints.is_dir() else None
    check_run(sft, run, resuming=last is not None)
    if not resume and checkpoints.exists():
        shutil.rmtree(checkpoints)
    data_path = sft / "examples.jsonl"
    if not data_path.is_file() or data_path.read_text(encoding="utf-8") != text:
        atomic_write_text(data_path, text)  # unchanged file: datasets' cache is reused on resume
    atomic_write_text(sft / "run.json", json.dumps(run, indent=2) + "\n")
    dataset = load_dataset("json", data_files=str(data_path), split="train", cache_dir=str(sft / "cache"))
    logger.info("SFT on %d examples (%d dropped), %d reflection tokens trainable", len(rows), dropped, len(token_ids))

    # with no base path to compare vocab sizes with, peft saves LoRA + the new rows only, not both
    # resized embedding matrices (1.1 GB for Qwen) in every checkpoint; a resumed run rebuilds the
    # same rows, since add_reflection_tokens is deterministic
    model.name_or_path = ""
    trainer = SFTTrainer(model=model, args=_sft_args(cfg, checkpoints), train_dataset=dataset,
                         processing_class=tokenizer, peft_config=lora_config(_train_config(cfg), model, tokenizer))
    use_logging(trainer)
    expose_head_bias(trainer.model)  # trl's fused LM-head loss reads lm_head.bias through peft's wrapper
    if last:
        logger.info("resuming SFT from %s", last)
    trainer.train(resume_from_checkpoint=last)

    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    final_loss = losses[-1] if losses else None
    if trainer.is_world_process_zero():
        merged = trainer.model.merge_and_unload()
        merged.config.use_cache = True
        info = {**run, "steps": trainer.state.global_step, "final_loss": final_loss, "examples": len(rows),
                "dropped": dropped, "reflection_token_ids": dict(zip(selfrag.SPECIAL_TOKENS, token_ids))}
        save_model_folder(target, merged, tokenizer, info, info_name="distill.json")
    trainer.accelerator.wait_for_everyone()
    result = SftResult(model_dir=target, steps=trainer.state.global_step, final_loss=final_loss,
                       examples=len(rows), dropped=dropped, seconds=time.time() - start, resumed_from=last)
    logger.info("SFT done: %d steps, final loss %s, model %s", result.steps, result.final_loss, target)
    return result
