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
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from calm_rag import selfrag
from calm_rag.config import GenerateConfig
from calm_rag.generate import Generator
from calm_rag.languages import text_for

log = logging.getLogger(__name__)

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
        """The cache file's translations; a line cut off by an interrupt is skipped (it is made again)."""
        done: dict[str, str] = {}
        if self.cache is None or not self.cache.is_file():
            return done
        for line in self.cache.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                done[record["key"]] = record["output"]
            except (json.JSONDecodeError, KeyError, TypeError):
                log.warning("%s: skipped a cut-off or malformed line; its translation is made again", self.cache)
        return done

    def many(self, requests: Sequence[tuple[str, str, str]]) -> list[str]:
        """(text, source language, target language) -> the text with its answer part translated, greedy."""
        from tqdm.auto import tqdm

        answers = [selfrag.parse_output(text).answer for text, _, _ in requests]
        keys = {i: self.key(a, requests[i][1], requests[i][2]) for i, a in enumerate(answers) if a}
        done = self._cached()
        missing = list(dict.fromkeys(k for k in keys.values() if k not in done))  # each distinct request once
        first = {k: i for i, k in reversed(list(keys.items()))}
        with tqdm(total=len(missing), desc="translating", unit="answer", disable=not missing) as bar:
            for start in range(0, len(missing), self.chunk):
                part = missing[start:start + self.chunk]
                if self._gen is None:
                    self._gen = self._load()
                prompts = [self._gen.chat_prompt(TRANSLATE_PROMPT.format(
                    src=text_for(requests[first[k]][1]).name, tgt=text_for(requests[first[k]][2]).name,
                    text=answers[first[k]])) for k in part]
                outputs = {k: samples[0].strip() for k, samples in zip(part, self._gen.generate(prompts, self.cfg))}
                done.update(outputs)
                if self.cache is not None:
                    with self.cache.open("a", encoding="utf-8") as f:
                        f.writelines(json.dumps({"key": k, "output": o}, ensure_ascii=False) + "\n"
                                     for k, o in outputs.items())
                bar.update(len(part))
        out = [text for text, _, _ in requests]  # nothing to translate: kept as written
        for i, k in keys.items():
            translated = selfrag.parse_output(done[k]).answer  # the model may not forge tokens
            out[i] = requests[i][0].replace(answers[i], translated, 1) if translated.strip() else ""  # none written
        return out
