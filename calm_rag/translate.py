"""The generator's own translation of a winning answer, for languages where no sample agreed (CALM's pairs).

Only the answer text of the source's raw completion is translated; a native model's reflection
tokens around it are kept as it wrote them. The result is no sample of the model in the target
language, so pairs mark it (`PreferencePair.chosen_source="translation"`) and report its share.
`many` translates a whole list in one batched generate call (what the pairs stage uses).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from calm_rag import selfrag
from calm_rag.config import GenerateConfig
from calm_rag.generate import Generator
from calm_rag.languages import text_for

TRANSLATE_PROMPT = (
    "Translate the following answer from {src} into {tgt}. Keep option letters (A, B, C, ...) exactly as they are. "
    "Reply with the translation only.\n\n{text}")


class Translator:
    """Translations by a generator that loads on first use, so runs that never need one never load it."""

    def __init__(self, load: Callable[[], Generator], max_new_tokens: int = 128):
        self._load = load
        self._gen: Generator | None = None
        self.cfg = GenerateConfig(n=1, temperature=0.0, max_new_tokens=max_new_tokens)

    def __call__(self, text: str, src: str, tgt: str) -> str:
        return self.many([(text, src, tgt)])[0]

    def many(self, requests: Sequence[tuple[str, str, str]]) -> list[str]:
        """(text, source language, target language) -> the text with its answer part translated, greedy."""
        answers = [selfrag.parse_output(text).answer for text, _, _ in requests]
        todo = [i for i, a in enumerate(answers) if a]
        out = [text for text, _, _ in requests]  # nothing to translate: kept as written
        if not todo:
            return out
        if self._gen is None:
            self._gen = self._load()
        prompts = [self._gen.chat_prompt(TRANSLATE_PROMPT.format(src=text_for(requests[i][1]).name,
                                                                 tgt=text_for(requests[i][2]).name, text=answers[i]))
                   for i in todo]
        for i, samples in zip(todo, self._gen.generate(prompts, self.cfg)):
            translated = selfrag.parse_output(samples[0].strip()).answer or answers[i]  # the model may not forge tokens
            out[i] = requests[i][0].replace(answers[i], translated, 1)
        return out
