"""The generator's own translation of a winning answer, for languages where no sample agreed (CALM's pairs).

Only the answer text of the source's raw completion is translated; a native model's reflection
tokens around it are kept as it wrote them. The result is no sample of the model in the target
language, so pairs mark it (`PreferencePair.chosen_source="translation"`) and report its share.
`many` translates a list in batched generate calls of `chunk` answers, with a progress bar; with
a `cache` file (the pairs stage keeps one in the run folder) every finished chunk is appended as
JSON lines, so an interrupted pairs stage translates only what is left when it is run again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from calm_rag import selfrag
from calm_rag.config import GenerateConfig
from calm_rag.generate import Generator
from calm_rag.languages import text_for
from calm_rag.records import JsonlAppender, read_jsonl

# The text goes last, fenced, so that a small model reads it as text to translate and not as a question to
# answer (asked "Keep option letters (A, B, C, ...)", the 1.5B coder model often replied with a bare "A").
TRANSLATE_PROMPT = (
    "Translate the text between the two lines of dashes from {src} into {tgt}. It is someone's answer to a "
    "multiple-choice question: translate all of it, and copy its option letter (such as \"B.\") unchanged. "
    "Write the translation only.\n-----\n{text}\n-----")


class Translator:
    """Translations by a generator that loads on first use, so runs that never need one never load it."""

    def __init__(self, load: Callable[[], Generator], max_new_tokens: int = 128, cache: str | Path | None = None,
                 chunk: int = 32):
        self._load = load
        self._gen: Generator | None = None
        self.cfg = GenerateConfig(n=1, temperature=0.0, max_new_tokens=max_new_tokens)
        self.cache = Path(cache) if cache is not None else None
        self.chunk = chunk

    def __call__(self, text: str, src: str, tgt: str) -> str:
        return self.many([(text, src, tgt)])[0]

    def key(self, answer: str, src: str, tgt: str) -> str:
        """What a cached translation was made from: the answer, both languages, the prompt and the length."""
        made_from = json.dumps([answer, src, tgt, TRANSLATE_PROMPT, self.cfg.max_new_tokens], ensure_ascii=False)
        return hashlib.sha256(made_from.encode("utf-8")).hexdigest()

    def _cached(self) -> dict[str, str]:
        """The cache file's translations (a last line cut off by an interrupt is left out: it is made again)."""
        if self.cache is None or not self.cache.is_file():
            return {}
        return {record["key"]: record["output"] for record in read_jsonl(self.cache)}

    def many(self, requests: Sequence[tuple[str, str, str]]) -> list[str]:
        """(text, source language, target language) -> the text with its answer part translated, greedy."""
        from tqdm.auto import tqdm

        answers = [selfrag.parse_output(text).answer for text, _, _ in requests]
        keys = {i: self.key(a, requests[i][1], requests[i][2]) for i, a in enumerate(answers) if a}
        done = self._cached()
        missing: dict[str, int] = {}  # each distinct request once: its key -> the first request asking for it
        for i, k in keys.items():
            if k not in done:
                missing.setdefault(k, i)
        todo = list(missing.items())
        with tqdm(total=len(todo), desc="translating", unit="answer", disable=not todo) as bar:
            for start in range(0, len(todo), self.chunk):
                part = todo[start:start + self.chunk]
                if self._gen is None:
                    self._gen = self._load()
                prompts = [self._gen.chat_prompt(TRANSLATE_PROMPT.format(
                    src=text_for(requests[i][1]).name, tgt=text_for(requests[i][2]).name, text=answers[i]))
                    for _, i in part]
                samples = self._gen.generate(prompts, self.cfg)
                outputs = {k: s[0].strip() for (k, _), s in zip(part, samples)}
                done.update(outputs)
                if self.cache is not None:
                    with JsonlAppender(self.cache) as cache:
                        for k, o in outputs.items():
                            cache.append({"key": k, "output": o})
                bar.update(len(part))
        out = [text for text, _, _ in requests]  # nothing to translate: kept as written
        for i, k in keys.items():
            translated = selfrag.parse_output(done[k]).answer  # the model may not forge tokens
            out[i] = requests[i][0].replace(answers[i], translated, 1) if translated.strip() else ""  # none written
        return out
