"""The transformers backend: batched, seeded sampling in torch (the CUDA path; the model DPO trains).

Every call is seeded, so a unit of work (one question in one language, or a fixed group of
them) gives the same text whether it runs alone or after a restart; that is what makes sampling
resumable. Prompts are sorted by length before they are cut into batches, so left padding wastes
little compute; the results come back in the caller's order.

Where the time goes on a CPU: the prompt (passages included) is compute-bound, about 100
tokens/s for the 0.5B generator on 2 cores, while one decoding step costs nearly the same for 1
or 16 rows (reading the weights dominates). So the prompt is computed once for its n samples
(KV cache copied), and many prompts decode together.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

from calm_rag.config import GenerateConfig
from calm_rag.generate import GenerationCancelled, TokenizerGenerator

log = logging.getLogger(__name__)


class TransformersGenerator(TokenizerGenerator):
    """A causal LM and its tokenizer, ready for batched sampling and next-token probabilities."""

    backend = "transformers"

    def __init__(self, model, tokenizer, name: str = ""):
        super().__init__(tokenizer, name, getattr(getattr(model, "generation_config", None), "eos_token_id", None))
        self.model = model
        model.register_forward_pre_hook(lambda module, args: self.check_cancel())

    @classmethod
    def load(cls, spec: str, adapter: str | None = None, device: str | None = None,
             threads: int = 0) -> TransformersGenerator:
        import torch

        from calm_rag.models import load_causal_lm

        if threads:
            torch.set_num_threads(threads)
        model, tokenizer = load_causal_lm(spec, adapter=adapter, device=device)
        tokenizer.padding_side = "left"
        return cls(model, tokenizer, spec)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def encode(self, prompts: Sequence[str]) -> dict:
        """Left-padded input ids and attention mask on the model's device (prompts hold their own specials)."""
        self.tokenizer.padding_side = "left"
        enc = self.tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
        return {k: v.to(self.device) for k, v in enc.items()}

    def generate_scored(self, prompts: Sequence[str], cfg: GenerateConfig, groups: Sequence[Sequence[str]],
                        n: int | None = None, seed: int | None = None
                        ) -> tuple[list[list[str]], list[list[dict[str, float]]]]:
        """n samples per prompt, and for each sample and each token group (e.g. the relevance tokens), the
        probabilities of the group's tokens at the first step where the sample wrote one of them.

        The probabilities are the model's own (softmax of the raw logits, before temperature and
        top-p), recorded by a logits processor, so nothing of vocabulary size is kept per step.
        """
        import torch

        n = cfg.n if n is None else n
        watched = [[self.tokenizer.convert_tokens_to_ids(t) for t in g] for g in groups]
        flat_ids = sorted({i for g in watched for i in g})
        texts: list[list[str]] = [[] for _ in prompts]
        tables: list[list[dict[str, float]]] = [[] for _ in prompts]
        torch.manual_seed(cfg.seed if seed is None else seed)
        if self.observer is not None:
            self.observer.on_start(len(prompts) * n)
        for idx in length_batches(self.tokenizer, prompts, max(1, cfg.batch_size // n)):
            enc = self.encode([prompts[i] for i in idx])
            recorder = _ProbRecorder(flat_ids) if flat_ids else None
            with torch.inference_mode():
                ids = self._generate_shared_prefix(enc, n, self._generate_kwargs(cfg, recorder, idx, n))
            self.check_cancel()
            new = ids[:, enc["input_ids"].shape[1]:]
            decoded = [self.clean(t) for t in self.tokenizer.batch_decode(new, skip_special_tokens=False)]
            for row, text in enumerate(decoded):
                texts[idx[row // n]].append(text)
                tables[idx[row // n]].append(recorder.table(row, new[row].tolist(), groups, watched) if recorder else {})
        if self.observer is not None:
            self.observer.on_end()
        return texts, tables

    def _generate_kwargs(self, cfg: GenerateConfig, recorder, idx: Sequence[int] = (), n: int = 1) -> dict:
        """Greedy for temperature 0; otherwise sampling by `_NucleusSampler` and a greedy pick of its token."""
        from transformers import LogitsProcessorList, StoppingCriteriaList

        processors = [p for p in (recorder, _NucleusSampler(cfg.temperature, cfg.top_p) if cfg.temperature > 0 else None)
                      if p is not None]
        kwargs = dict(max_new_tokens=cfg.max_new_tokens, min_new_tokens=cfg.min_new_tokens or None, do_sample=False,
                      pad_token_id=self.tokenizer.pad_token_id)
        if processors:
            kwargs["logits_processor"] = LogitsProcessorList(processors)
        if self.observer is not None:
            watch = _Watch(self, [i * n + s for i in idx for s in range(n)])
            kwargs["stopping_criteria"] = StoppingCriteriaList([watch.criteria()])
            kwargs["streamer"] = watch
        return kwargs

    def _generate_shared_prefix(self, enc: dict, n: int, kwargs: dict):
        """n samples per prompt with the prompt computed once: prefill all but the last prompt token,
        copy the KV cache n times, and let generate continue from it. On a CPU the prompt (passages
        included) is most of the work, so this is where batching pays."""
        from transformers import DynamicCache

        ids, mask = enc["input_ids"], enc["attention_mask"]
        if n == 1 or ids.shape[1] < 2:
            return self.model.generate(**enc, num_return_sequences=n, **kwargs)
        cache = DynamicCache(config=self.model.config)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        self.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                   cache=cache, use_cache=True, logits_to_keep=1)
        cache.batch_repeat_interleave(n)
        return self.model.generate(input_ids=ids.repeat_interleave(n, 0), attention_mask=mask.repeat_interleave(n, 0),
                                   cache=cache, **kwargs)

    def next_token_probs(self, prompts: Sequence[str], candidates: Sequence[str],
                         batch_size: int = 16) -> list[dict[str, float]]:
        """p(first token of each candidate | prompt), softmax over the whole vocabulary; every candidate
        key is returned (0.0 for one that encodes to no token).

        Candidates whose first token is shared are reported with the same probability; callers
        choose candidates that start with distinct tokens (reflection tokens are single tokens).
        Only the last position's logits are computed.
        """
        import torch

        first_ids = self.first_token_ids(candidates)
        out: list[dict[str, float]] = [dict.fromkeys(candidates, 0.0) for _ in prompts]
        for idx in length_batches(self.tokenizer, prompts, batch_size):
            self.check_cancel()
            enc = self.encode([prompts[i] for i in idx])
            with torch.inference_mode():
                logits = self.model(**enc, logits_to_keep=1).logits[:, -1, :].float()
            probs = torch.softmax(logits, dim=-1)
            for i, row in zip(idx, probs):
                out[i].update({c: float(row[t]) for c, t in first_ids.items()})
        return out


class _Watch:
    """The observer's view of one transformers generate call: a batch-aware streamer and a cancel check."""

    def __init__(self, gen: TransformersGenerator, rows: list[int]):
        self.gen, self.rows_of = gen, rows
        self.tokens: list[list[int]] | None = None

    def criteria(self):
        import torch
        from transformers import StoppingCriteria

        gen = self.gen

        class Cancel(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                stop = gen.observer is not None and gen.observer.cancelled()
                return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

        return Cancel()

    def put(self, value) -> None:
        if self.tokens is None:  # the first put is the prompt batch
            self.tokens = [[] for _ in range(value.shape[0])]
            return
        tok = self.gen.tokenizer
        for r, (row, token) in enumerate(zip(self.tokens, value.reshape(-1).tolist())):
            row.append(token)
            if token == tok.pad_token_id and len(row) > 1:
                continue  # a finished sequence, padded: nothing new to show
            if self.gen.observer is not None and r < len(self.rows_of):
                self.gen.observer.on_token(self.rows_of[r], self.gen.clean(tok.decode(row, skip_special_tokens=False)))

    def end(self) -> None:
        pass


class _NucleusSampler:
    """Temperature + top-p sampling inside a logits processor; generate then picks its token greedily.

    transformers' own path sorts the whole vocabulary and draws with `torch.multinomial` over it at
    every step: about 0.6 s + 0.2 s per step for 36 rows of a 152k vocabulary on 2 cores, more than
    the model's own decoding step. Here the nucleus is cut from the top `k` logits (exact whenever
    they hold the top_p mass; rows where they do not fall back to the full sort), the draw is over
    those few, and every other logit becomes -inf. Same distribution as top_p sampling (top_k=0).
    """

    def __init__(self, temperature: float, top_p: float, k: int = 1024):
        self.temperature, self.top_p, self.k = temperature, top_p, k

    def __call__(self, input_ids, scores):
        import torch

        logits = scores.float() / self.temperature
        logz = torch.logsumexp(logits, dim=-1, keepdim=True)
        vals, idx = logits.topk(min(self.k, logits.shape[-1]), dim=-1)
        tokens = torch.empty(logits.shape[0], 1, dtype=torch.long, device=logits.device)
        for row in range(logits.shape[0]):
            v, i = vals[row], idx[row]
            if float((v - logz[row]).exp().sum()) < self.top_p:  # the nucleus reaches past the top k
                v, i = logits[row].sort(descending=True)
            probs = (v - logz[row]).exp()
            keep = (probs.cumsum(0) - probs) < self.top_p  # the smallest prefix holding top_p (at least one)
            tokens[row, 0] = i[torch.multinomial(probs * keep, 1)]
        return torch.full_like(scores, float("-inf")).scatter_(-1, tokens, 0.0)


class _ProbRecorder:
    """A logits processor that keeps, per step, the probabilities of a few watched token ids."""

    def __init__(self, token_ids: list[int]):
        self.ids = token_ids
        self.steps: list = []  # per step: [rows, len(ids)] probabilities

    def __call__(self, input_ids, scores):
        import torch

        self.steps.append(torch.softmax(scores.float(), dim=-1)[:, self.ids].cpu())
        return scores

    def table(self, row: int, tokens: list[int], groups: Sequence[Sequence[str]],
              watched: list[list[int]]) -> dict[str, float]:
        col = {t: j for j, t in enumerate(self.ids)}
        table: dict[str, float] = {}
        for names, gids in zip(groups, watched):
            step = next((s for s, t in enumerate(tokens) if t in gids and s < len(self.steps)), None)
            if step is not None:
                table.update({name: float(self.steps[step][row, col[t]]) for name, t in zip(names, gids)})
        return table


def length_batches(tokenizer, prompts: Sequence[str], size: int) -> Iterator[list[int]]:
    """Indices of `prompts`, longest first, in batches of `size`: similar lengths share a batch."""
    lengths = [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]] if prompts else []
    order = sorted(range(len(prompts)), key=lambda i: (-lengths[i], i))
    for i in range(0, len(order), size):
        yield order[i:i + size]


__all__ = ["TransformersGenerator", "GenerationCancelled", "length_batches"]
