"""Language codes and the per-language prompt text the generator and extractor rely on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LanguageText:
    name: str  # English name, used in "Answer in {name}"
    instruction: str  # asks for an explanation and ONE option letter
    explanation_cue: str
    answer_cue: str  # the cue that precedes the answer letter (in instructions and the demo questions)
    answer_words: tuple[str, ...]  # every word a model may use before its answer
    question_word: str


LANGUAGES: dict[str, LanguageText] = {
    "en": LanguageText(
        "English",
        "Answer the multiple-choice question. Give a short explanation, then exactly ONE option letter.",
        "Explanation:", "Answer:", ("Answer", "The answer is", "Correct answer", "Final answer"), "Question:"),
    "zh": LanguageText(
        "Chinese",
        "回答下面的选择题。先给出简短解释，再给出唯一一个正确选项的字母。",
        "解释:", "答案:", ("答案", "正确答案", "最终答案", "回答", "答"), "问题:"),
    "fr": LanguageText(
        "French",
        "Répondez à la question à choix multiples. Donnez une brève explication, puis UNE seule lettre d'option.",
        "Explication :", "Réponse :", ("Réponse", "La réponse est", "Bonne réponse", "Réponse correcte", "Réponse finale"),
        "Question :"),
    "de": LanguageText(
        "German",
        "Beantworten Sie die Multiple-Choice-Frage. Geben Sie eine kurze Erklärung und dann genau EINEN Optionsbuchstaben.",
        "Erklärung:", "Antwort:", ("Antwort", "Die Antwort ist", "Richtige Antwort", "Die richtige Antwort ist"), "Frage:"),
    "it": LanguageText(
        "Italian",
        "Rispondi alla domanda a scelta multipla. Dai una breve spiegazione, poi UNA sola lettera di opzione.",
        "Spiegazione:", "Risposta:", ("Risposta", "La risposta è", "Risposta corretta", "La risposta corretta è"),
        "Domanda:"),
    "ja": LanguageText(
        "Japanese",
        "次の多肢選択問題に答えてください。短い説明の後、正しい選択肢の記号を一つだけ答えてください。",
        "説明:", "答え:", ("答え", "回答", "正解", "解答", "答"), "質問:"),
}

DEFAULT_LANGS: tuple[str, ...] = ("en", "zh", "fr", "de", "it", "ja")
CJK_LANGS: tuple[str, ...] = ("zh", "ja")  # no spaces between sentences: chunked at 。！？ first


class UnknownLanguageError(ValueError):
    pass


def check_lang(code: str, where: str = "") -> str:
    """Return a known language code or raise naming the known ones."""
    code = (code or "").strip().lower()
    if code not in LANGUAGES:
        prefix = f"{where}: " if where else ""
        raise UnknownLanguageError(
            f"{prefix}unknown language code {code!r}; use one of {', '.join(LANGUAGES)}")
    return code


def text_for(code: str) -> LanguageText:
    return LANGUAGES[check_lang(code)]


_DETECTOR = None


def detect_lang(text: str, default: str = "en") -> str:
    """The question's language among ours, by lingua (a maintained detector); `default` if unsure."""
    global _DETECTOR
    from lingua import IsoCode639_1, LanguageDetectorBuilder

    if _DETECTOR is None:
        codes = [getattr(IsoCode639_1, c.upper()) for c in LANGUAGES]
        _DETECTOR = LanguageDetectorBuilder.from_iso_codes_639_1(*codes).build()
    found = _DETECTOR.detect_language_of(text)
    if found is None:
        return default
    code = found.iso_code_639_1.name.lower()
    return code if code in LANGUAGES else default
