"""Batched sampling backend on transformers: many prompts x samples in one padded batch.

Every call is seeded, so a unit of work (one question in one language) gives the same text
whether it runs alone or after a restart; that is what makes sampling resumable.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from calm_rag.config import GenerateConfig

log = logging.getLogger(__name__)


@dataclass
class Generator:
    """A causal LM and its tokenizer, ready for batched sampling and next-token probabilities."""

    model: object
    tokenizer: object
    name: str = ""

    @classmethod
    def load(cls, spec: str, adapter: str | None = None, device: str | None = None) -> Generator:
        from calm_rag.models import load_causal_lm

        model, tokenizer = load_causal_lm(spec, adapter=adapter, device=device)
        tokenizer.padding_side = "left"
        return cls(model, tokenizer, spec)

    @property
    def device(self):
        return next(self.model.parameters()).device  # type: ignore[attr-defined]

    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def chat_prompt(self, user: str, system: str | None = None) -> str:
        """Wrap a user message in the model's chat template (plain text when it has none)."""
        if not self.has_chat_template():
            return user
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)  # type: ignore[attr-defined]

    def _encode(self, prompts: Sequence[str]):
        self.tokenizer.padding_side = "left"  # type: ignore[attr-defined]
        enc = self.tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)  # type: ignore[operator]
        return {k: v.to(self.device) for k, v in enc.items()}

    def generate(self, prompts: Sequence[str], cfg: GenerateConfig, n: int | None = None,
                 seed: int | None = None) -> list[list[str]]:
        """n samples for each prompt; batches of cfg.batch_size sequences; seeded per call."""
        import torch

        n = cfg.n if n is None else n
        per_batch = max(1, cfg.batch_size // n)
        out: list[list[str]] = []
        torch.manual_seed(cfg.seed if seed is None else seed)
        for chunk in _chunks(list(prompts), per_batch):
            enc = self._encode(chunk)
            sample = cfg.temperature > 0
            kwargs = dict(max_new_tokens=cfg.max_new_tokens, do_sample=sample,
                          pad_token_id=self.tokenizer.pad_token_id)  # type: ignore[attr-defined]
            if sample:
                kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)
            with torch.inference_mode():
                ids = self._generate_shared_prefix(enc, n, kwargs)
            new = ids[:, enc["input_ids"].shape[1]:]
            texts = self.tokenizer.batch_decode(new, skip_special_tokens=False)  # type: ignore[attr-defined]
            texts = [self._strip_pad(t) for t in texts]
            out.extend(texts[i * n:(i + 1) * n] for i in range(len(chunk)))
        return out

    def _generate_shared_prefix(self, enc: dict, n: int, kwargs: dict):
        """n samples per prompt with the prompt computed once: prefill all but the last prompt token,
        copy the KV cache n times, and let generate continue from it. On a CPU the prompt (passages
        included) is most of the work, so this is where batching pays."""
        from transformers import DynamicCache

        ids, mask = enc["input_ids"], enc["attention_mask"]
        if n == 1 or ids.shape[1] < 2:
            return self.model.generate(**enc, num_return_sequences=n, **kwargs)  # type: ignore[attr-defined]
        cache = DynamicCache(config=self.model.config)  # type: ignore[attr-defined]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        self.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],  # type: ignore[attr-defined]
                   cache=cache, use_cache=True)
        cache.batch_repeat_interleave(n)
        return self.model.generate(input_ids=ids.repeat_interleave(n, 0), attention_mask=mask.repeat_interleave(n, 0),  # type: ignore[attr-defined]
                                   cache=cache, **kwargs)

    def _strip_pad(self, text: str) -> str:
        """Cut at the end-of-turn token and drop padding; other special tokens (reflection tokens) stay."""
        tok = self.tokenizer
        if tok.eos_token:  # type: ignore[attr-defined]
            text = text.split(tok.eos_token)[0]  # type: ignore[attr-defined]
        for pad in {tok.pad_token, "<|endoftext|>"} - {None}:  # type: ignore[attr-defined]
            text = text.replace(pad, "")
        return text.strip()

    def next_token_probs(self, prompts: Sequence[str], candidates: Sequence[str],
                         batch_size: int = 16) -> list[dict[str, float]]:
        """p(first token of each candidate | prompt), softmax over the whole vocabulary.

        Candidates whose first token is shared are reported with the same probability; callers
        choose candidates that start with distinct tokens (reflection tokens are single tokens).
        """
        import torch

        first_ids = {}
        for cand in candidates:
            ids = self.tokenizer.encode(cand, add_special_tokens=False)  # type: ignore[attr-defined]
            if ids:
                first_ids[cand] = ids[0]
        out: list[dict[str, float]] = []
        for chunk in _chunks(list(prompts), batch_size):
            enc = self._encode(chunk)
            with torch.inference_mode():
                logits = self.model(**enc).logits[:, -1, :].float()  # type: ignore[attr-defined]
            probs = torch.softmax(logits, dim=-1)
            for row in probs:
                out.append({c: float(row[i]) for c, i in first_ids.items()})
        return out


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
