"""CALM sampling throughput: the batched multilingual sampler vs one `generate` call per sample.

Both sides generate the same sequences' worth of work from the same prompts: each demo question in
several languages, each with its top-k passages, n samples per passage prompt, max_new_tokens.
- batched: `SelfRag.answer_many` on groups of `--units-per-batch` question-language units (question
  major, so a group holds whole questions in all their languages): every prompt is computed once
  for its n samples and all prompts of the group decode in one padded batch;
- baseline: one `Generator.generate([prompt], n=1)` call per sample.
Useful tokens (up to EOS) per second of generation are compared in one process, so the ratio is
robust to machine noise. The batched side also reports the full Self-RAG pass (verbalised critique
included) for reference; the baseline has no critique.

    python scripts/bench_calm.py --data xcsqa --questions 2 --langs en,zh,fr

DPO seconds per step with and without precomputed reference log-probs: scripts/bench_dpo.py
(pass --dpo here to run it after the sampling part). Demo wall time: `time make demo`.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--index", default=str(REPO / "indexes" / "demo"))
    ap.add_argument("--questions", type=int, default=2)
    ap.add_argument("--langs", default="en,zh,fr")
    ap.add_argument("-n", type=int, default=3, help="samples per prompt")
    ap.add_argument("-k", type=int, default=2, help="passages per question")
    ap.add_argument("--max-new-tokens", type=int, default=96, help="the sampler's default")
    ap.add_argument("--data", choices=["demo", "xcsqa", "medqa"], default="demo",
                    help="demo questions (bundled) or the first X-CSQA / MedQA-USMLE questions from ../shared/data")
    ap.add_argument("--fixed-length", action="store_true",
                    help="block end-of-turn until max_new_tokens: every sequence has the same length (the usual "
                         "throughput benchmark, like vLLM's ignore_eos); default: answers end where the model ends them")
    ap.add_argument("--full", action="store_true", help="also time the full Self-RAG pass (verbalised critique)")
    ap.add_argument("--units-per-batch", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=48, help="sequences per padded batch")
    ap.add_argument("--dpo", action="store_true", help="also run scripts/bench_dpo.py on the same model")
    args = ap.parse_args()

    import torch

    from calm_rag import selfrag
    from calm_rag.config import GenerateConfig, SelfRagConfig
    from calm_rag.generate import load_generator
    from calm_rag.retrieve import load_retriever
    from calm_rag.qa import load_questions
    from calm_rag.rag import SelfRag

    gen = load_generator(args.model, device="cpu")
    retriever = load_retriever(args.index)
    cfg = GenerateConfig(n=args.n, temperature=0.8, max_new_tokens=args.max_new_tokens, seed=0,
                         min_new_tokens=args.max_new_tokens if args.fixed_length else 0,
                         batch_size=args.batch_size, units_per_batch=args.units_per_batch)
    rag = SelfRag(gen, retriever, SelfRagConfig(top_k=args.k, retrieval="always"), cfg)
    langs = args.langs.split(",")
    files = {"demo": REPO / "calm_rag" / "data" / "demo_questions" / "{lang}.json",
             "xcsqa": REPO.parent / "shared" / "data" / "xcsqa" / "train" / "{lang}.json",
             "medqa": REPO.parent / "shared" / "data" / "medqa" / "usmle" / "{lang}.json"}
    per_lang = {lang: load_questions(str(files[args.data]).format(lang=lang), lang=lang) for lang in langs}
    units = [per_lang[lang][i] for i in range(args.questions) for lang in langs]  # question-major
    groups = [units[i:i + args.units_per_batch] for i in range(0, len(units), args.units_per_batch)]
    eos = gen.tokenizer.eos_token

    def count(texts):
        if args.fixed_length:
            return len(texts) * args.max_new_tokens
        return sum(len(gen.tokenizer.encode(t.split(eos)[0] if eos else t, add_special_tokens=False)) for t in texts)

    gen.generate([gen.chat_prompt("hi")], GenerateConfig(n=1, max_new_tokens=4))  # warm-up
    # the prompts exactly as the sampler builds them (retrieval once, outside both timings)
    hits = {(q.id, q.lang): h for q, h in zip(units, retriever.search([selfrag.question_text(q) for q in units],
                                                                        k=args.k))}
    decisions = [(True, None)] * args.units_per_batch

    # batched: generation only (what "sampling tokens/s" means), then the full Self-RAG pass
    t_gen, batched = 0.0, []
    for group in groups:
        prompts = [rag.prompt(selfrag.question_instruction(q), h) for q in group for h in hits[(q.id, q.lang)]]
        t = time.perf_counter()
        batched += [s for row in gen.generate(prompts, cfg, seed=len(batched)) for s in row]
        t_gen += time.perf_counter() - t
    t_full = None
    if args.full:
        t = time.perf_counter()
        for group in groups:
            rag.answer_many(group, hits=[hits[(q.id, q.lang)] for q in group], decisions=decisions[:len(group)])
        t_full = time.perf_counter() - t

    single_cfg = dataclasses.replace(cfg, n=1, batch_size=1)
    single, t = [], time.perf_counter()
    for q in units:
        for h in hits[(q.id, q.lang)]:
            p = rag.prompt(selfrag.question_instruction(q), h)
            single += [gen.generate([p], single_cfg, seed=len(single) + s)[0][0] for s in range(args.n)]
    t_single = time.perf_counter() - t

    tb, ts = count(batched), count(single)
    print(f"model {args.model}, {args.data} questions, {len(units)} question-language units ({args.questions} questions x {len(langs)} "
          f"languages) x {args.k} passages x {args.n} samples, max_new_tokens {args.max_new_tokens}, "
          f"{'fixed-length outputs, ' if args.fixed_length else ''}{args.units_per_batch} units per batch, batch_size {args.batch_size}, torch threads {torch.get_num_threads()}")
    print("| mode | sequences | useful tokens | seconds | tokens/s |")
    print("|---|---:|---:|---:|---:|")
    print(f"| batched multilingual sampler (generation) | {len(batched)} | {tb} | {t_gen:.1f} | {tb / t_gen:.1f} |")
    print(f"| one generate call per sample | {len(single)} | {ts} | {t_single:.1f} | {ts / t_single:.1f} |")
    if t_full is not None:
        print(f"| batched sampler + verbalised critique (full Self-RAG pass) | {len(batched)} | - | {t_full:.1f} | - |")
    print(f"\nspeed-up (useful tokens/s, batched vs one call per sample): {(tb / t_gen) / (ts / t_single):.2f}x; "
          f"wall time for the same sequences: {t_single / t_gen:.2f}x")
    if args.dpo:
        import subprocess
        import sys

        subprocess.run([sys.executable, str(Path(__file__).with_name("bench_dpo.py")), "--model", args.model], check=True)


if __name__ == "__main__":
    main()
