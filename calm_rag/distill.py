"""Distil the verbalised critic into a small Self-RAG model with its own reflection tokens.

Any instruct model can play Self-RAG through verbalised critic prompts (`rag.SelfRag` in verbalised
mode), but every answer then costs one generation plus several critic passes. This module turns
those critiques into training data and fine-tunes the same model to write the reflection tokens
itself, so `SelfRag` picks native mode for it (`rag.has_reflection_tokens`) and scores a passage
from the logits of one generation.

Two resumable stages, one output folder:
1. label: for each training question (held-out positions skipped), the verbalised critic decides
   retrieval; the model answers once per retrieved passage (or once without one) and the critic
   scores relevance, support and utility. Each probability table becomes hard labels by argmax
   and the example is rendered in Self-RAG's format with the passage included:
   `[Retrieval]<paragraph>title\\ntext</paragraph>[Relevant]answer[Fully supported][Utility:5]`
   or `[No Retrieval]answer[Utility:4]`, after the prompt `format_prompt(instruction)`.
2. train: the reflection tokens and paragraph tags become special tokens (new rows initialised
   to the mean of the rows of the pieces they used to split into), then LoRA SFT with trl, the
   new tokens' input and output rows trainable (peft `trainable_token_indices`, tied or not).
   As in Self-RAG, the loss skips the prompt and the passage text inside <paragraph>..</paragraph>
   (the tags themselves are learned). The adapter is merged into a plain model folder.

Folder layout (`out`):
  distill.json            config, versions, counts and seconds per stage
  labelled.jsonl          one `Example` per line; a question's examples are appended together, so
                          a restart skips finished questions and redoes a half-written one
  sft/run.json            what the checkpoints were made from (examples hash, model, LoRA shape)
  sft/examples.jsonl      token ids and labels (-100 outside the loss) fed to trl
  sft/checkpoints/        Trainer checkpoints; a rerun resumes from the last one
  model/                  the merged model + tokenizer (reflection tokens as special tokens):
                          `AutoModelForCausalLM.from_pretrained(out/model)`, `load_generator(out/model)`;
                          `model/distill.json` says what it was distilled from
The first `holdout` questions of each language (by position) are never labelled, so
`scripts/bench_distill.py` can measure the model on them.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calm_rag import selfrag
from calm_rag.config import ConfigError, DistillConfig, TrainConfig
from calm_rag.records import (Critique, JsonlAppender, Question, RecordError, atomic_write_text,
                              read_jsonl, write_jsonl)

log = logging.getLogger(__name__)

LABEL_GROUPS: dict[str, tuple[str, ...]] = {
    "retrieval": (selfrag.RETRIEVAL, selfrag.NO_RETRIEVAL),
    "relevance": selfrag.RELEVANCE_TOKENS,
    "support": selfrag.SUPPORT_TOKENS,
    "utility": selfrag.UTILITY_TOKENS,
}
# settings that change what a labelled example says: a labelled.jsonl made with others is refused
LABEL_KEYS = ("model", "index", "embedder", "data", "dataset", "langs", "holdout", "top_k", "retrieval",
              "max_new_tokens", "temperature", "seed")


# ---------------------------------------------------------------- questions


def load_pools(cfg: DistillConfig) -> dict[str, list[Question]]:
    """The configured languages' questions, aligned by position (mismatches are logged, not dropped)."""
    from calm_rag.qa import load_parallel

    return load_parallel({lang: cfg.data[lang] for lang in cfg.langs}, dataset=cfg.dataset or None, drop=False).by_lang


def distill_units(cfg: DistillConfig, pools: Mapping[str, list[Question]] | None = None) -> list[tuple[int, Question]]:
    """(position, question) units to label: positions after the holdout, languages in config order."""
    pools = pools or load_pools(cfg)
    n = min(len(qs) for qs in pools.values())
    if cfg.holdout >= n:
        raise ConfigError(f"distill.holdout={cfg.holdout} keeps out all {n} questions; lower it")
    stop = n if cfg.max_questions is None else min(n, cfg.holdout + cfg.max_questions)
    return [(i, pools[lang][i]) for i in range(cfg.holdout, stop) for lang in cfg.langs]


def holdout_units(cfg: DistillConfig, limit: int | None = None,
                  pools: Mapping[str, list[Question]] | None = None) -> list[tuple[int, Question]]:
    """The held-out (position, question) units, at most `limit` positions, for measuring the result."""
    pools = pools or load_pools(cfg)
    stop = cfg.holdout if limit is None else min(cfg.holdout, limit)
    return [(i, pools[lang][i]) for i in range(stop) for lang in cfg.langs]


# ---------------------------------------------------------------- labels and rendering


def argmax_token(probs: Mapping[str, float], tokens: Sequence[str]) -> str | None:
    """The most probable token of a group (ties: the first in group order); None when all are missing/zero."""
    values = [float(probs.get(t) or 0.0) for t in tokens]
    if max(values) <= 0.0:
        return None
    return tokens[values.index(max(values))]


def hard_labels(probs: Mapping[str, float], retrieved: bool) -> dict[str, str | None]:
    """Argmax labels of a critic's probability table. Without a passage there is no relevance or
    support to judge, so those are None; `retrieved` fixes the retrieval label to what was done."""
    labels = {group: argmax_token(probs, tokens) for group, tokens in LABEL_GROUPS.items()}
    labels["retrieval"] = selfrag.RETRIEVAL if retrieved else selfrag.NO_RETRIEVAL
    if not retrieved:
        labels["relevance"] = labels["support"] = None
    return labels


def labels_critique(labels: Mapping[str, str | None]) -> Critique:
    """A Critique whose expected values map back onto exactly these tokens in selfrag.critique_tokens."""
    rel, sup, use = labels.get("relevance"), labels.get("support"), labels.get("utility")
    sup_value = {selfrag.FULLY_SUPPORTED: 1.0, selfrag.PARTIALLY_SUPPORTED: 0.5, selfrag.NO_SUPPORT: 0.0}
    return Critique(rel=None if rel is None else float(rel == selfrag.RELEVANT),
                    sup=None if sup is None else sup_value[sup],
                    use=None if use is None else (selfrag.UTILITY_TOKENS.index(use) - 2) / 2)


def render_example(answer: str, labels: Mapping[str, str | None], passage=None,
                   extra_special: Sequence[str] = ()) -> str:
    """The Self-RAG training sequence after the prompt, passage included (selfrag.render_output)."""
    retrieved = labels.get("retrieval") == selfrag.RETRIEVAL and passage is not None
    return selfrag.render_output(answer, labels_critique(labels), passage, retrieved=retrieved,
                                 include_passage=True, extra_special=extra_special)


@dataclass(frozen=True)
class Example:
    """One labelled training example: a question, at most one passage, the teacher's answer and labels."""

    question_id: str
    lang: str
    position: int  # the question's position in its file (after alignment)
    slot: int  # the example's number within its question
    of: int  # examples of this question; the question is done when all are on disk
    prompt: str  # selfrag.format_prompt(instruction), no passage
    output: str  # the Self-RAG sequence, passage included
    answer: str  # the answer alone ("" when the teacher wrote nothing usable)
    letter: str | None
    gold: str | None
    labels: dict[str, str | None] = field(default_factory=dict)
    probs: dict[str, float] = field(default_factory=dict)  # the critic's table the labels come from
    passage_id: str | None = None
    completed: bool = False  # the answer's letter came from SelfRag's answer-cue step (cue and letter appended)


def critic_tables(rag, question: Question, candidates: Sequence[Any]) -> list[dict[str, float]]:
    """The critic's probability table per candidate (relevance, support, utility), as `rag.SelfRag`
    scored it (`Candidate.probs`); `question` and `rag` are kept for callers' symmetry."""
    missing = [i for i, c in enumerate(candidates) if not getattr(c, "probs", None)]
    if missing:
        raise ValueError(f"candidate(s) {missing} of question {question.id} carry no critique table; "
                         f"answer with rag.SelfRag (it keeps Candidate.probs)")
    return [dict(c.probs) for c in candidates]


def label_group(rag, units: Sequence[tuple[int, Question]], retrieval: str = "critic") -> list[Example]:
    """Answer a group of questions (one position in every language) with the verbalised SelfRag in
    one batched pass (`answer_many`) and turn each critique into examples."""
    questions = [q for _, q in units]
    decisions, needs = [], []
    for _, p_ret in rag.retrieval_decision(questions):
        need = {} if p_ret is None else {selfrag.RETRIEVAL: p_ret, selfrag.NO_RETRIEVAL: 1.0 - p_ret}
        wants = retrieval == "always" or argmax_token(need, LABEL_GROUPS["retrieval"]) == selfrag.RETRIEVAL
        decisions.append((wants, p_ret))
        needs.append(need)
    answers = rag.answer_many(questions, n=1, decisions=decisions)
    out = []
    for (position, question), answer, need, (wants, _) in zip(units, answers, needs, decisions):
        cands = answer.samples[0]
        tables = critic_tables(rag, question, cands)
        prompt = selfrag.format_prompt(selfrag.question_instruction(question))
        for slot, (cand, table) in enumerate(zip(cands, tables)):
            probs = {**table, **need}
            labels = hard_labels(probs, retrieved=cand.hit is not None)
            passage = cand.hit.passage if cand.hit else None
            out.append(Example(
                question_id=question.id, lang=question.lang, position=position, slot=slot, of=len(cands),
                prompt=prompt, output=render_example(cand.answer, labels, passage, rag.extra_special),
                answer=cand.answer.strip(), letter=cand.letter, gold=question.gold, labels=labels,
                probs={k: round(float(v), 6) for k, v in probs.items()},
                passage_id=passage.id if passage else None, completed=bool(getattr(cand, "completed", False))))
        if wants and not answer.hits:
            log.warning("%s/%s: retrieval wanted but the index returned no passage", question.id, question.lang)
    return out


def read_examples(path: str | Path) -> list[Example]:
    return list(read_jsonl(path, Example))


def label_units(rag, units: Sequence[tuple[int, Question]], out_path: str | Path, retrieval: str = "critic",
                on_group: Callable[[int], None] | None = None) -> list[Example]:
    """Label every unit, one position (all its languages) per batch; finished positions are skipped.

    A position's examples are appended together after its batch. One cut short by an interrupt
    (a language missing, or fewer than `of` examples of a question) is dropped on restart and
    redone as the same batch, so a resumed run writes the same records as an uninterrupted one.
    """
    from tqdm.auto import tqdm

    out_path = Path(out_path)
    groups: dict[int, list[tuple[int, Question]]] = {}
    for i, q in units:
        groups.setdefault(i, []).append((i, q))
    if out_path.exists():
        on_disk: dict[int, list[Example]] = {}
        for ex in read_examples(out_path):
            on_disk.setdefault(ex.position, []).append(ex)
        complete = {pos: exs for pos, exs in on_disk.items() if _complete(exs, groups.get(pos))}
        if len(complete) != len(on_disk):
            log.warning("%s: dropping %d half-labelled position(s) left by an interrupted run",
                        out_path, len(on_disk) - len(complete))
            write_jsonl(out_path, [e for exs in complete.values() for e in exs])
        todo = [g for pos, g in groups.items() if pos not in complete]
    else:
        todo = list(groups.values())
    log.info("labelling: %d position(s) done, %d to go (%d language(s) each)",
             len(groups) - len(todo), len(todo), len(next(iter(groups.values()), [])))
    with JsonlAppender(out_path) as app:
        for n, group in enumerate(tqdm(todo, desc="labelling", unit="position", disable=not todo)):
            for ex in label_group(rag, group, retrieval):
                app.append(ex)
            if on_group:
                on_group(n)
    return read_examples(out_path)


def _complete(examples: list[Example], group: list[tuple[int, Question]] | None) -> bool:
    """Every question of the position is on disk with all of its examples."""
    if group is None:  # a position no longer asked for (max_questions lowered): keep it
        return True
    per_q: dict[tuple[str, str], list[Example]] = {}
    for ex in examples:
        per_q.setdefault((ex.question_id, ex.lang), []).append(ex)
    wanted = {(q.id, q.lang) for _, q in group}
    return set(per_q) == wanted and all(len(v) == v[0].of for v in per_q.values())


# ---------------------------------------------------------------- tokens, masks


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
        log.info("added %d Self-RAG tokens to the tokenizer (%d now)", len(new), len(tokenizer))
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


def usable(ex: Example, only_correct: bool) -> bool:
    if not ex.answer:
        return False
    return not only_correct or ex.gold is None or ex.letter == ex.gold


# ---------------------------------------------------------------- SFT


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
    """The LoRA part of a TrainConfig, so train.lora_config builds the adapter the same way as for DPO."""
    return TrainConfig(lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                       lora_targets=cfg.lora_targets, train_tokens="reflection", max_length=cfg.max_length,
                       learning_rate=cfg.learning_rate, seed=cfg.seed)


def train_sft(labelled: str | Path, cfg: DistillConfig, out_dir: str | Path, resume: bool = True) -> SftResult:
    """LoRA SFT of cfg.model on the labelled examples; the merged model lands in `out_dir/model`."""
    from datasets import load_dataset
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTTrainer

    from calm_rag.models import load_causal_lm
    from calm_rag.train import check_run, expose_head_bias, load_dtype, use_logging, lora_config

    start = time.time()
    out_dir = Path(out_dir)
    sft = out_dir / "sft"
    examples = read_examples(labelled)
    model, tokenizer = load_causal_lm(cfg.model, device="cpu", dtype=load_dtype(cfg.device))
    token_ids = add_reflection_tokens(model, tokenizer)
    rows, dropped = [], 0
    for ex in examples:
        row = encode_example(ex.prompt, ex.output, tokenizer, cfg.max_length) if usable(ex, cfg.only_correct) else None
        if row is None:
            dropped += 1
        else:
            rows.append(row)
    if not rows:
        raise RecordError(f"{labelled}: none of {len(examples)} examples is usable (empty answers"
                          f"{', wrong letters' if cfg.only_correct else ''} or over max_length); label more questions")
    text = "".join(json.dumps(r) + "\n" for r in rows)
    run = {"examples_sha256": hashlib.sha256(text.encode()).hexdigest(), "model": cfg.model, "lora_r": cfg.lora_r,
           "lora_alpha": cfg.lora_alpha, "lora_targets": cfg.lora_targets, "max_length": cfg.max_length}
    target = out_dir / "model"
    done = json.loads((target / "distill.json").read_text()) if (target / "distill.json").is_file() else {}
    if resume and done.get("steps") == cfg.steps and all(done.get(k) == v for k, v in run.items()):
        log.info("%s is already trained on these examples for %d steps; nothing to do", target, cfg.steps)
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
    log.info("SFT on %d examples (%d dropped), %d reflection tokens trainable", len(rows), dropped, len(token_ids))

    # with no base path to compare vocab sizes with, peft saves LoRA + the new rows only, not both
    # resized embedding matrices (1.1 GB for Qwen) in every checkpoint; a resumed run rebuilds the
    # same rows, since add_reflection_tokens is deterministic
    model.name_or_path = ""
    trainer = SFTTrainer(model=model, args=_sft_args(cfg, checkpoints), train_dataset=dataset,
                         processing_class=tokenizer, peft_config=lora_config(_train_config(cfg), model, tokenizer))
    use_logging(trainer)
    expose_head_bias(trainer.model)  # trl's fused LM-head loss reads lm_head.bias through peft's wrapper
    if last:
        log.info("resuming SFT from %s", last)
    trainer.train(resume_from_checkpoint=last)

    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    final_loss = losses[-1] if losses else None
    if trainer.is_world_process_zero():
        merged = trainer.model.merge_and_unload()
        merged.config.use_cache = True
        info = {**run, "steps": trainer.state.global_step, "final_loss": final_loss, "examples": len(rows),
                "dropped": dropped, "reflection_token_ids": dict(zip(selfrag.SPECIAL_TOKENS, token_ids))}
        _save_folder(target, merged, tokenizer, info)
    trainer.accelerator.wait_for_everyone()
    result = SftResult(model_dir=target, steps=trainer.state.global_step, final_loss=final_loss,
                       examples=len(rows), dropped=dropped, seconds=time.time() - start, resumed_from=last)
    log.info("SFT done: %d steps, final loss %s, model %s", result.steps, result.final_loss, target)
    return result


def _save_folder(target: Path, model, tokenizer, info: dict[str, Any]) -> None:
    """Save model + tokenizer to a temp folder and rename it into place (readers never see half)."""
    tmp, old = target.with_name(f".{target.name}.tmp"), target.with_name(f".{target.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    atomic_write_text(tmp / "distill.json", json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- the whole job


def make_teacher(cfg: DistillConfig, generator=None, retriever=None):
    """The verbalised SelfRag that labels: greedy (or cfg.temperature) single answers, k passages."""
    from calm_rag.config import GenerateConfig, SelfRagConfig
    from calm_rag.generate import load_generator
    from calm_rag.retrieve import load_retriever
    from calm_rag.rag import SelfRag

    if not Path(cfg.index).is_dir():
        raise ConfigError(f"distill.index={cfg.index} does not exist; build it with calm-rag index build")
    gen = generator or load_generator(cfg.model, device=cfg.device)
    retriever = retriever or load_retriever(cfg.index, cfg.embedder)
    scfg = SelfRagConfig(retrieval="adaptive", threshold=0.5, top_k=cfg.top_k, critique="verbalised", index=cfg.index)
    gcfg = GenerateConfig(n=1, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    return SelfRag(gen, retriever, scfg, gcfg)


class Distillation:
    """One output folder; `label()` and `train()` are resumable and recorded in distill.json."""

    def __init__(self, cfg: DistillConfig):
        self.cfg = cfg
        self.dir = Path(cfg.out)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.dir / "distill.json"
        self.manifest = json.loads(self.manifest_path.read_text()) if self.manifest_path.exists() else {}
        old, new = self.manifest.get("config"), cfg.to_dict()
        if old:
            diff = [k for k in LABEL_KEYS if old.get(k) != new.get(k)]
            if diff and (self.dir / "labelled.jsonl").exists():
                raise ConfigError(f"{self.manifest_path}: labelled with other {diff} "
                                  f"({[old.get(k) for k in diff]} vs {[new.get(k) for k in diff]}); "
                                  f"use another out folder or the same settings")
        self.manifest["config"] = new
        self.manifest.setdefault("stages", {})
        from calm_rag.records import package_versions

        self.manifest.setdefault("versions", package_versions())
        self._save()

    def _save(self) -> None:
        atomic_write_text(self.manifest_path, json.dumps(self.manifest, indent=2, ensure_ascii=False) + "\n")

    @property
    def labelled_path(self) -> Path:
        return self.dir / "labelled.jsonl"

    def label(self, rag=None, on_group: Callable[[int], None] | None = None) -> list[Example]:
        started = time.time()
        units = distill_units(self.cfg)
        rag = rag or make_teacher(self.cfg)
        examples = label_units(rag, units, self.labelled_path, self.cfg.retrieval, on_group)
        counts: dict[str, Any] = {"questions": len(units), "examples": len(examples)}
        for group in LABEL_GROUPS:
            tally: dict[str, int] = {}
            for ex in examples:
                key = ex.labels.get(group) or "-"
                tally[key] = tally.get(key, 0) + 1
            counts[group] = tally
        counts["correct"] = sum(ex.letter is not None and ex.letter == ex.gold for ex in examples)
        counts["completed"] = sum(ex.completed for ex in examples)
        self.manifest["stages"]["label"] = {"seconds": round(time.time() - started, 1), **counts}
        self._save()
        return examples

    def train(self, resume: bool = True) -> SftResult:
        if not self.labelled_path.is_file():
            raise ConfigError(f"{self.labelled_path} is missing; run the label stage first")
        result = train_sft(self.labelled_path, self.cfg, self.dir, resume=resume)
        self.manifest["stages"]["train"] = {"seconds": round(result.seconds, 1), "steps": result.steps,
                                            "final_loss": result.final_loss, "examples": result.examples,
                                            "dropped": result.dropped, "model": str(result.model_dir)}
        self._save()
        return result

    def run(self, stage: str = "all", resume: bool = True) -> dict[str, Any]:
        if stage not in ("label", "train", "all"):
            raise ConfigError(f"stage={stage!r}; use label, train or all")
        if stage in ("label", "all"):
            self.label()
            gc.collect()  # the teacher goes before the student loads
        if stage in ("train", "all"):
            self.train(resume=resume)
        return self.manifest["stages"]


def distill(cfg: DistillConfig, stage: str = "all", resume: bool = True) -> dict[str, Any]:
    """Label and/or train as configured; returns the stages' counts and timings."""
    return Distillation(cfg).run(stage, resume)
