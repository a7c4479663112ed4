"""Choosing DPO's hyperparameters on a validation slice of the train split, never on the dev split.

The paper gives no offline hyperparameters, so a run's `train` settings are picked here: each arm
trains an adapter on a run folder's pairs with its own changes to the run's TrainConfig, then
answers the validation questions (`splits/<set>-val.json`: the last questions of the train list,
which runs never train on) greedily, as the run's evaluation does; the base model answers them
once. The winner is the arm with the highest mean accuracy + consistency on that slice (CALM
promises both), among the arms whose answers are still explanations: an arm whose mean answer is
shorter than `MIN_ANSWER_SHARE` of the base model's has collapsed to bare letters (seen at lr 3e-4 on
the 1.5B: 9 characters against 179) and is not chosen, however it scores. Every arm, its numbers and the winner go to one JSON file, rewritten after each graded arm
(`complete` is false until the last one). Arms resume like the
stages they are made of (DPO checkpoints, evaluation folders).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from calm_rag.config import ConfigError, TrainConfig
from calm_rag.config_files import from_mapping, saved_run_config
from calm_rag.records import atomic_write_text

log = logging.getLogger(__name__)

MIN_ANSWER_SHARE = 0.5  # an arm's mean answer length / the base's below this: collapsed, not eligible


def parse_arm(text: str) -> dict[str, Any]:
    """`beta=0.1,learning_rate=5e-5,max_steps=30` -> the TrainConfig changes of one arm (validated)."""
    import yaml

    changes: dict[str, Any] = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"sweep arm {text!r}: {item!r} is not KEY=VALUE; write e.g. beta=0.1,max_steps=30")
        changes[key.strip()] = _value(value.strip(), yaml)
    if not changes:
        raise ConfigError(f"sweep arm {text!r} changes nothing; write e.g. beta=0.1,max_steps=30")
    from_mapping(TrainConfig, changes, f"sweep arm {text!r}")  # unknown keys and bad values fail here
    return changes


def _value(text: str, yaml) -> Any:
    """A number as a number (1e-2 too, which YAML 1.1 reads as text), else what YAML makes of it."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def arm_name(changes: dict[str, Any]) -> str:
    return "-".join(f"{k}{v}" for k, v in changes.items()).replace("/", "_").replace(",", "+")


def score(report: dict[str, Any]) -> float:
    """What picks the winner: mean accuracy + consistency on the validation slice."""
    return (report["mean_accuracy"] or 0.0) + (report["consistency"] or 0.0)


def collapsed(val: dict[str, Any], base: dict[str, Any]) -> bool:
    """True when an arm answers far shorter than the base model (bare letters instead of explanations)."""
    return val["mean_answer_chars"] < MIN_ANSWER_SHARE * base["mean_answer_chars"]


def choose(result: dict[str, Any]) -> str | None:
    """The best-scoring arm that has not collapsed; None when every arm collapsed."""
    eligible = [n for n, arm in result["arms"].items() if not collapsed(arm["val"], result["base"])]
    return max(eligible, key=lambda n: score(result["arms"][n]["val"]), default=None)


def mean_answer_chars(folder: Path) -> float:
    """Mean length of the answers an evaluation folder holds, as the model wrote them."""
    lengths = [len(json.loads(line)["text"]) for f in sorted(folder.glob("*.generations.jsonl"))
               for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    return round(sum(lengths) / len(lengths), 1) if lengths else 0.0


def run_sweep(run_dir: str | Path, arms: list[dict[str, Any]], val_split: str | Path, out: str | Path,
              max_questions: int | None = None) -> dict[str, Any]:
    """Train and grade every arm on the run's pairs; write and return {"base", "arms", "chosen"}."""
    from calm_rag.eval_files import evaluate_files
    from calm_rag.train import train_dpo

    run_dir, out = Path(run_dir), Path(out)
    cfg = saved_run_config(run_dir)
    pairs = run_dir / "pairs.jsonl"
    if not pairs.is_file():
        raise ConfigError(f"sweep: {pairs} is missing; make the pairs first: calm-rag calm pairs --run {run_dir}")
    split_doc = json.loads(Path(val_split).read_text(encoding="utf-8"))
    trained_on = set(json.loads((run_dir / "split.json").read_text(encoding="utf-8"))["train"])
    if set(split_doc.get("dev", [])) & trained_on:
        raise ConfigError(f"sweep: {val_split}'s validation questions overlap {run_dir}'s training questions; use "
                          f"the <set>-val.json split of scripts/make_splits.py (the end of the train list)")
    langs = list(cfg.eval_languages)
    files = [cfg.data.files[lang] for lang in langs]
    mode = cfg.eval.retrieval[:1]  # the run's first evaluation mode

    def grade(adapter: str | None, folder: Path) -> dict[str, Any]:
        report = next(iter(evaluate_files(files, cfg, langs=langs, adapter=adapter, retrieval=mode,
                                          max_questions=max_questions, split=val_split, out=folder).values()))
        return {"mean_accuracy": report.mean_accuracy, "consistency": report.consistency,
                "vote_accuracy": report.vote_accuracy, "accuracy": report.accuracy, "n_questions": report.n_questions,
                "mean_answer_chars": mean_answer_chars(folder)}

    work = run_dir / "sweep"
    result: dict[str, Any] = {"run": str(run_dir), "val_split": str(val_split), "retrieval": mode[0],
                              "selection": "highest mean_accuracy + consistency on the validation slice, among "
                                           f"arms whose mean answer is at least {MIN_ANSWER_SHARE} of the base's",
                              "base": grade(None, work / "base"), "arms": {}, "complete": False}
    out.parent.mkdir(parents=True, exist_ok=True)

    def write() -> None:  # after every graded arm, so a sweep cut short still leaves its numbers
        atomic_write_text(out, json.dumps(result, indent=2) + "\n")

    write()
    for changes in arms:
        name = arm_name(changes)
        train_cfg = dataclasses.replace(cfg.train, **changes)
        log.info("sweep arm %s: DPO on %s", name, pairs)
        trained = train_dpo(pairs, cfg.model.generator, work / name, train_cfg, device=cfg.model.device)
        result["arms"][name] = {"changes": changes, "train": dataclasses.asdict(train_cfg), "steps": trained.steps,
                                "train_seconds": round(trained.seconds, 1), "final_loss": trained.final_loss,
                                "val": grade(str(trained.adapter_dir), work / name / "val")}
        write()
    if result["arms"]:
        result["chosen"] = choose(result)
        result["collapsed"] = [n for n, arm in result["arms"].items() if collapsed(arm["val"], result["base"])]
    result["complete"] = True
    write()
    return result
