"""CALM loop costs: sampling throughput of the batched sampler vs one generate call per sample.

The batched sampler puts all passages x samples of one question in one padded batch; the baseline
calls generate once per sample.
Both runs generate the same number of sequences with the same max_new_tokens from the same prompts
(demo questions in several languages, each with its top-k demo passages), measured in one process
so the ratio is robust to machine noise. Tokens counted are generated tokens up to EOS.

    python scripts/bench_calm.py --model qwen2.5-coder-0.5b-instruct --questions 2 --langs en,zh,fr

DPO seconds per step with and without precomputed reference log-probs: scripts/bench_dpo.py
(pass --dpo here to run it after the sampling part). Demo wall time: `time make demo`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--index", default=str(REPO / "indexes" / "demo"))
    ap.add_argument("--questions", type=int, default=4)
    ap.add_argument("--langs", default="en,zh,fr")
    ap.add_argument("-n", type=int, default=3, help="samples per prompt")
    ap.add_argument("-k", type=int, default=2, help="passages per question")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--dpo", action="store_true", help="also run scripts/bench_dpo.py on the same model")
    args = ap.parse_args()

    import torch

    from calm_rag.config import GenerateConfig, SelfRagConfig
    from calm_rag.generate import Generator
    from calm_rag.pipeline import load_retriever
    from calm_rag.qa import load_questions
    from calm_rag.rag import SelfRag

    gen = Generator.load(args.model, device="cpu")
    retriever = load_retriever(args.index)
    rag = SelfRag(gen, retriever, SelfRagConfig(top_k=args.k, retrieval="always"))
    from calm_rag import selfrag

    units = []
    for lang in args.langs.split(","):
        qs = load_questions(REPO / "corpora" / "demo_questions" / f"{lang}.json", lang=lang)[:args.questions]
        for q in qs:
            hits = retriever.search([q.stem], k=args.k)[0]
            units.append([rag.prompt(selfrag.question_instruction(q), h) for h in hits])
    cfg = GenerateConfig(n=args.n, temperature=0.8, max_new_tokens=args.max_new_tokens,
                         batch_size=args.k * args.n, seed=0)
    eos = gen.tokenizer.eos_token

    def count(texts):
        return sum(len(gen.tokenizer.encode(t.split(eos)[0] if eos else t, add_special_tokens=False)) for t in texts)

    gen.generate(units[0][:1], GenerateConfig(n=1, max_new_tokens=4))  # warm-up
    t = time.perf_counter()
    batched = [s for prompts in units for row in gen.generate(prompts, cfg) for s in row]
    t_batched = time.perf_counter() - t
    single_cfg = GenerateConfig(n=1, temperature=0.8, max_new_tokens=args.max_new_tokens, batch_size=1, seed=0)
    t = time.perf_counter()
    single = [gen.generate([p], single_cfg, seed=i)[0][0]
              for prompts in units for p in prompts for i in range(args.n)]
    t_single = time.perf_counter() - t
    tb, ts = count(batched), count(single)
    print(f"model {args.model}, {len(units)} question-language units x {args.k} passages x {args.n} samples, "
          f"max_new_tokens {args.max_new_tokens}, torch threads {torch.get_num_threads()}")
    print("| mode | sequences | tokens | seconds | tokens/s |")
    print("|---|---:|---:|---:|---:|")
    print(f"| batched (one padded batch per question) | {len(batched)} | {tb} | {t_batched:.1f} | {tb / t_batched:.1f} |")
    print(f"| one generate call per sample | {len(single)} | {ts} | {t_single:.1f} | {ts / t_single:.1f} |")
    print(f"\nspeed-up (tokens/s): {(tb / t_batched) / (ts / t_single):.2f}x")
    if args.dpo:
        import subprocess
        import sys

        subprocess.run([sys.executable, str(Path(__file__).with_name("bench_dpo.py")), "--model", args.model], check=True)


if __name__ == "__main__":
    main()
