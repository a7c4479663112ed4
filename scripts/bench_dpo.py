"""DPO seconds per step with and without precomputed reference log-probs, on the same pairs.

Precomputing runs the reference (adapter disabled) once over all pairs before training, so each
step then does one forward+backward instead of an extra reference forward. This measures both
modes in one run and prints one JSON object (the ratios included).

    python scripts/bench_dpo.py                                   # tiny 2-layer model, built on the spot
    python scripts/bench_dpo.py --model smollm2-135m-instruct --pairs 16 --tokens 300 --steps 8
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PASSAGE = ("Milk, yoghurt and butter are kept in the refrigerator so that bacteria grow slowly. "
           "An oven heats food, a car carries people, and a desk holds papers. ")
OPTIONS = {"A": "refrigerator", "B": "oven", "C": "car", "D": "desk", "E": "roof"}


def synthetic_pairs(tokenizer, n: int, tokens: int) -> list[dict[str, str]]:
    """n pairs whose prompt + answer is about `tokens` tokens: a chat prompt holding a passage."""
    answer = "Answer: A. refrigerator. The passage says milk is kept cold there."
    wrong = "Answer: B. oven. Ovens keep food."
    rows = []
    for i in range(n):
        opts = " ".join(f"{k}. {v}" for k, v in OPTIONS.items())
        passage = ""
        while True:
            user = f"Passage: {passage}\nQuestion {i}: where do you keep milk? {opts}\nAnswer with a letter."
            prompt = (tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                                    add_generation_prompt=True)
                      if getattr(tokenizer, "chat_template", None) else user + "\n")
            size = len(tokenizer(prompt + answer, add_special_tokens=False)["input_ids"])
            if size >= tokens:
                break
            passage += PASSAGE
        rows.append({"prompt": prompt, "chosen": answer, "rejected": wrong})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="tiny (built on the spot), a packaged name or a folder")
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=300, help="approximate prompt + answer tokens per pair")
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per mode")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--work", default=None, help="folder for the runs (default: a temp folder)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from transformers import AutoTokenizer

    from calm_rag.config import TrainConfig
    from calm_rag.models import resolve_model
    from calm_rag.records import write_jsonl
    from calm_rag.train import train_dpo

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_dpo."))
    if args.model == "tiny":
        from tests.fixtures.tiny_lm import build_tiny_lm

        model = str(build_tiny_lm(work / "tiny_lm"))
    else:
        model = str(resolve_model(args.model))
    tokenizer = AutoTokenizer.from_pretrained(model)
    pairs = work / "pairs.jsonl"
    rows = synthetic_pairs(tokenizer, args.pairs, args.tokens)
    write_jsonl(pairs, rows)
    lengths = [len(tokenizer(r["prompt"] + r["chosen"], add_special_tokens=False)["input_ids"]) for r in rows]

    def run(name: str, precompute: bool, steps: int) -> dict:
        cfg = TrainConfig(max_steps=steps, batch_size=args.batch_size, max_length=args.max_length,
                          precompute_ref=precompute, save_steps=10**6, learning_rate=1e-4)
        start = time.perf_counter()
        result = train_dpo(pairs, model, work / name, cfg, resume=False, device=args.device)
        wall = time.perf_counter() - start
        train_s = result.metrics["train_runtime"]
        return {"steps": result.steps, "seconds_per_step": train_s / result.steps, "train_seconds": train_s,
                "setup_seconds": wall - train_s, "wall_seconds": wall, "final_loss": result.final_loss}

    run("warmup", False, 1)  # imports, kernels and caches warm up outside the measured runs
    plain = run("reference_each_step", False, args.steps)
    pre = run("precomputed_reference", True, args.steps)
    # precompute cost = the extra setup time of the precompute run (one reference pass over all pairs)
    precompute_s = max(pre["setup_seconds"] - plain["setup_seconds"], 0.0)
    saved = plain["seconds_per_step"] - pre["seconds_per_step"]
    report = {
        "model": args.model, "device": args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "pairs": args.pairs, "tokens_per_pair": {"min": min(lengths), "max": max(lengths)},
        "batch_size": args.batch_size, "steps": args.steps,
        "reference_each_step": plain, "precomputed_reference": pre,
        "step_time_ratio_precomputed_over_plain": pre["seconds_per_step"] / plain["seconds_per_step"],
        "wall_ratio_precomputed_over_plain": pre["wall_seconds"] / plain["wall_seconds"],
        "precompute_seconds_estimate": precompute_s,
        "break_even_steps": (precompute_s / saved) if saved > 0 else None,
        "work": str(work),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
