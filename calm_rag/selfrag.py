"""Self-RAG without a model: reflection tokens, prompts, passage neutralising, critique scoring,
rendering/parsing of Self-RAG sequences, and answer-letter extraction.

Everything here is pure Python so that the model-running parts (native critique from logits,
verbalised critic prompts, generation) can call it and tests can check it by hand. Probabilities
are always probabilities, never log-probabilities.
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from calm_rag.languages import LANGUAGES, check_lang, text_for
from calm_rag.records import Critique, Passage, Question

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- reflection tokens

RETRIEVAL = "[Retrieval]"
NO_RETRIEVAL = "[No Retrieval]"
CONTINUE_EVIDENCE = "[Continue to Use Evidence]"
RELEVANT = "[Relevant]"
IRRELEVANT = "[Irrelevant]"
FULLY_SUPPORTED = "[Fully supported]"
PARTIALLY_SUPPORTED = "[Partially supported]"
NO_SUPPORT = "[No support / Contradictory]"
UTILITY_TOKENS: tuple[str, ...] = tuple(f"[Utility:{i}]" for i in range(1, 6))
PARAGRAPH_OPEN = "<paragraph>"
PARAGRAPH_CLOSE = "</paragraph>"

RETRIEVAL_TOKENS = (RETRIEVAL, NO_RETRIEVAL, CONTINUE_EVIDENCE)
RELEVANCE_TOKENS = (RELEVANT, IRRELEVANT)
SUPPORT_TOKENS = (FULLY_SUPPORTED, PARTIALLY_SUPPORTED, NO_SUPPORT)
REFLECTION_TOKENS: tuple[str, ...] = RETRIEVAL_TOKENS + RELEVANCE_TOKENS + SUPPORT_TOKENS + UTILITY_TOKENS
#: every string Self-RAG adds to a tokenizer (`tokenizer.add_special_tokens(...)`)
SPECIAL_TOKENS: tuple[str, ...] = REFLECTION_TOKENS + (PARAGRAPH_OPEN, PARAGRAPH_CLOSE)

UTILITY_WEIGHTS = (-1.0, -0.5, 0.0, 0.5, 1.0)  # [Utility:1] .. [Utility:5]

# --------------------------------------------------------------------------- prompts

PROMPT_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"


def format_paragraph(passage: Passage, extra_special: Iterable[str] = ()) -> str:
    """`<paragraph>{title}\\n{text}</paragraph>` with title and text neutralised (they are untrusted)."""
    title = neutralise(passage.title, extra_special)
    text = neutralise(passage.text, extra_special)
    return f"{PARAGRAPH_OPEN}{title}\n{text}{PARAGRAPH_CLOSE}"


def format_prompt(instruction: str, passage: Passage | None = None, extra_special: Iterable[str] = ()) -> str:
    """The Self-RAG prompt; with a passage, `[Retrieval]<paragraph>...</paragraph>` follows the header.

    The instruction is the caller's own text and is not neutralised; only the passage is.
    """
    prompt = PROMPT_TEMPLATE.format(instruction=instruction)
    if passage is not None:
        prompt += RETRIEVAL + format_paragraph(passage, extra_special)
    return prompt


def question_text(q: Question) -> str:
    """The stem and lettered options: what retrieval searches with and what the critic is shown."""
    return "\n".join([q.stem, *(f"{k}. {v}" for k, v in q.options.items())]).strip()


def question_instruction(question: Question, instruction: str | None = None) -> str:
    """The instruction for a multiple-choice question in its own language.

    Layout: the language's instruction (or `instruction`), a blank line, the question word and
    stem, one `A. text` line per option, a blank line, and the language's explanation cue
    (`Explanation:`, `解释:`, ...). Ending on the answer cue made the 0.5B generator answer "B"
    to almost everything (4/16 right on 8 demo questions in en and zh with passages); ending on the
    explanation cue lets it reason first and then write its answer cue (7/16, 15/16 parsed).
    """
    lt = text_for(question.lang)
    if not question.options:  # an open question: no option-letter instruction, no answer cue
        head = instruction if instruction is not None else question.instruction
        return f"{head}\n\n{question.stem.strip()}" if head else question.stem.strip()
    head = instruction if instruction is not None else lt.instruction
    lines = [head, "", f"{lt.question_word} {question.stem.strip()}"]
    lines += [f"{letter}. {text.strip()}" for letter, text in question.options.items()]
    if question.options:
        lines += ["", lt.explanation_cue]
    return "\n".join(lines)


# --------------------------------------------------------------------------- neutralising untrusted text
#
# Choice: a forged marker is defused by replacing its ASCII brackets with ASCII parentheses
# (`[Relevant]` -> `(Relevant)`, `</paragraph>` -> `(/paragraph)`, `<|im_end|>` -> `(|im_end|)`,
# `[INST]` -> `(INST)`) and by dropping the `#` run of `### Response:`-style headers. The reader (and
# the model) still sees the words, but no tokenizer can map them back to a special token: unlike
# full-width brackets or zero-width spaces, parentheses survive NFKC normalisers and "clean text"
# steps. Only matched markers change; ordinary brackets such as `[1]` stay. Extra strings from a
# tokenizer (`tokenizer.all_special_tokens`) are defused the same way, or, when they hold no bracket,
# by a zero-width space after their first character. The rewrite repeats until nothing matches,
# so recombinations like `[[Relevant]Relevant]` cannot leave an exact special string behind.

_BRACKETS = str.maketrans({"[": "(", "]": ")", "<": "(", ">": ")", "［": "(", "］": ")", "＜": "(", "＞": ")"})
_OPEN, _CLOSE = r"[\[［]", r"[\]］]"
_LT, _GT = r"[<＜]", r"[>＞]"


def _loose(token: str) -> str:
    """Regex for a reflection token in any case with any spacing inside its brackets."""
    words = re.findall(r"[A-Za-z]+|\d+|[:/]", token)
    body = r"\s*".join(r"\d+" if w.isdigit() else re.escape(w) for w in words)
    return rf"{_OPEN}\s*{body}\s*{_CLOSE}"


_MARKER_RE = re.compile(
    "|".join(
        [_loose(t) for t in REFLECTION_TOKENS]
        + [
            rf"{_LT}\s*/?\s*paragraph\s*/?\s*{_GT}",  # <paragraph>, </ paragraph>, <PARAGRAPH/>
            rf"{_LT}\s*[|｜][^\n<>]{{0,80}}?[|｜]\s*{_GT}",  # <|im_start|>, <|endoftext|>, <|eot_id|>, ...
            rf"{_LT}\s*/?\s*(?:s|bos|eos|pad|unk|mask|start_of_turn|end_of_turn)\s*{_GT}",  # <s>, </s>, ...
            rf"{_OPEN}\s*/?\s*(?:INST|SYS)\s*{_CLOSE}",  # [INST], [/INST]
            rf"{_LT}{_LT}\s*/?\s*SYS\s*{_GT}{_GT}",  # <<SYS>>, <</SYS>>
        ]
    ),
    re.IGNORECASE,
)
_HEADER_RE = re.compile(r"[#＃]+[ \t]*(?=(?:instruction|response|input)\s*[:：])", re.IGNORECASE)
_ZWSP = "\u200b"


def _defuse_exact(text: str, token: str) -> str:
    if any(c in token for c in "[]<>"):
        return text.replace(token, token.translate(_BRACKETS))
    return text.replace(token, token[0] + _ZWSP + token[1:])


def neutralise(text: str, extra_special: Iterable[str] = ()) -> str:
    """Defuse reflection tokens, paragraph tags, chat-template markers and prompt headers in
    untrusted text (see the comment above for the choice); the result contains no exact string of
    SPECIAL_TOKENS, of the chat markers, or of `extra_special`."""
    extras = sorted({t for t in extra_special if t and t.strip()}, key=len, reverse=True)
    for _ in range(100):
        new = _MARKER_RE.sub(lambda m: m.group(0).translate(_BRACKETS), text)
        new = _HEADER_RE.sub("", new)
        for token in extras:
            new = _defuse_exact(new, token)
        if new == text:
            return text
        text = new
    raise RuntimeError("neutralise did not converge; report this input")  # pragma: no cover


# --------------------------------------------------------------------------- scoring


class ProbabilityError(ValueError):
    """A probability table holds something that is not a probability (negative, NaN, > 1)."""


@dataclass(frozen=True)
class CritiqueWeights:
    """Self-RAG's passage-score weights (its defaults: w_rel=1.0, w_sup=1.0, w_use=0.5)."""

    rel: float = 1.0
    sup: float = 1.0
    use: float = 0.5


RetrievalMode = Literal["adaptive", "always", "never"]
RETRIEVAL_MODES: tuple[str, ...] = ("adaptive", "always", "never")


def _p(probs: Mapping[str, float], token: str) -> float:
    value = probs.get(token, 0.0)
    if value is None:
        return 0.0
    value = float(value)
    if math.isnan(value) or value < 0.0 or value > 1.0 + 1e-6:
        hint = " (log-probabilities? pass math.exp of them)" if value < 0.0 else ""
        raise ProbabilityError(f"probability of {token!r} is {value}; expected a value in [0, 1]{hint}")
    return value


def _weighted(probs: Mapping[str, float], tokens: Sequence[str], weights: Sequence[float]) -> float | None:
    """sum_i w_i p_i / sum_i p_i over a token group; None when every token is missing or zero."""
    ps = [_p(probs, t) for t in tokens]
    total = sum(ps)
    if total <= 0.0:
        return None
    return sum(w * p for w, p in zip(weights, ps)) / total


def retrieval_prob(probs: Mapping[str, float]) -> float | None:
    """p([Retrieval]) / (p([Retrieval]) + p([No Retrieval])); None when both are missing or zero."""
    return _weighted(probs, (RETRIEVAL, NO_RETRIEVAL), (1.0, 0.0))


def should_retrieve(probs: Mapping[str, float], threshold: float = 0.2, mode: RetrievalMode = "adaptive") -> bool:
    """Self-RAG's retrieval decision. `adaptive` retrieves when retrieval_prob > threshold; with no
    information (both tokens missing) it does not retrieve. 0.2 is Self-RAG's short-form default."""
    if mode == "always":
        return True
    if mode == "never":
        return False
    if mode != "adaptive":
        raise ValueError(f"unknown retrieval mode {mode!r}; use one of {', '.join(RETRIEVAL_MODES)}")
    p = retrieval_prob(probs)
    if p is None:
        log.debug("no probability for %s or %s: not retrieving", RETRIEVAL, NO_RETRIEVAL)
    return p is not None and p > threshold


def relevance_score(probs: Mapping[str, float]) -> float | None:
    """p(Relevant) / (p(Relevant) + p(Irrelevant)), in [0, 1]."""
    return _weighted(probs, RELEVANCE_TOKENS, (1.0, 0.0))


def support_score(probs: Mapping[str, float]) -> float | None:
    """(p(Fully) + 0.5 p(Partially)) / (p(Fully) + p(Partially) + p(No support)), in [0, 1]."""
    return _weighted(probs, SUPPORT_TOKENS, (1.0, 0.5, 0.0))


def utility_score(probs: Mapping[str, float]) -> float | None:
    """sum_i w_i p(Utility:i) / sum_i p(Utility:i) with w = (-1, -0.5, 0, 0.5, 1), in [-1, 1]."""
    return _weighted(probs, UTILITY_TOKENS, UTILITY_WEIGHTS)


def score_critique(probs: Mapping[str, float], weights: CritiqueWeights = CritiqueWeights()) -> Critique:
    """The Self-RAG critique of one passage/answer from one probability table.

    `probs` maps token strings to probabilities; the groups' tokens are disjoint, so tables read
    at different positions (retrieval, relevance, support, utility) can be merged into one dict.
    A group whose tokens are all missing or zero is reported as None and contributes 0 to
    score = w.rel * rel + w.sup * sup + w.use * use.
    """
    p_retrieve = retrieval_prob(probs)
    rel, sup, use = relevance_score(probs), support_score(probs), utility_score(probs)
    score = weights.rel * (rel or 0.0) + weights.sup * (sup or 0.0) + weights.use * (use or 0.0)
    return Critique(p_retrieve=p_retrieve, rel=rel, sup=sup, use=use, score=score)


def aggregate_by_option(candidates: Iterable[tuple[str | None, float]]) -> dict[str, float]:
    """Sum passage scores per option letter (Self-RAG's closed-form aggregation); None letters are
    unparseable answers and are skipped. Letters keep first-seen order."""
    totals: dict[str, float] = {}
    for letter, score in candidates:
        if letter is None:
            continue
        totals[letter] = totals.get(letter, 0.0) + float(score)
    return totals


def best_option(totals: Mapping[str, float], tol: float = 1e-9) -> str | None:
    """The letter with the highest total; None when there is none or when the top is tied
    (within `tol`): we do not guess, the caller decides how to break ties."""
    if not totals:
        return None
    ranked = sorted(totals.items(), key=lambda kv: kv[1], reverse=True)
    if len(ranked) > 1 and ranked[0][1] - ranked[1][1] <= tol:
        return None
    return ranked[0][0]


# --------------------------------------------------------------------------- render and parse


def critique_tokens(critique: Critique) -> tuple[str | None, str | None, str | None]:
    """(relevance, support, utility) tokens for a critique's expected values; None where unknown.

    rel >= 0.5 -> [Relevant]; sup >= 0.75 -> [Fully supported], >= 0.25 -> [Partially supported],
    else [No support / Contradictory]; use in [-1, 1] -> [Utility:k], k = round(2 * use) + 3.
    """
    rel = None if critique.rel is None else (RELEVANT if critique.rel >= 0.5 else IRRELEVANT)
    sup = None
    if critique.sup is not None:
        sup = FULLY_SUPPORTED if critique.sup >= 0.75 else PARTIALLY_SUPPORTED if critique.sup >= 0.25 else NO_SUPPORT
    use = None
    if critique.use is not None:
        k = min(5, max(1, int(math.floor(2 * critique.use + 0.5)) + 3))
        use = UTILITY_TOKENS[k - 1]
    return rel, sup, use


def render_output(
    answer_text: str,
    critique: Critique | None = None,
    passage: Passage | None = None,
    retrieved: bool = False,
    include_passage: bool = True,
    extra_special: Iterable[str] = (),
) -> str:
    """A Self-RAG sequence for an answer and its critique.

    retrieved: `[Retrieval]<paragraph>..</paragraph>[Relevant]answer[Fully supported][Utility:5]`;
    not retrieved: `[No Retrieval]answer[Utility:5]`. With include_passage=False (DPO chosen and
    rejected, whose prompt from format_prompt(instruction, passage) already ends with the
    paragraph) a retrieved output starts at the relevance token. Reflection tokens and paragraphs
    inside answer_text are stripped first, so a native model's raw text can be re-rendered.
    """
    rel, sup, use = critique_tokens(critique or Critique())
    answer = _strip_special(answer_text, "").strip()
    if not retrieved:
        return NO_RETRIEVAL + answer + (use or "")
    head = ""
    if include_passage:
        head = RETRIEVAL + (format_paragraph(passage, extra_special) if passage is not None else "")
    return head + (rel or "") + answer + (sup or "") + (use or "")


@dataclass(frozen=True)
class ParsedOutput:
    """What a Self-RAG sequence says; every field None/empty when that piece is missing."""

    retrieval: bool | None  # True: [Retrieval] or a paragraph; False: [No Retrieval]
    relevance: str | None  # RELEVANT or IRRELEVANT (the first one)
    support: str | None  # one of SUPPORT_TOKENS (the first one)
    utility: int | None  # 1..5 (the first [Utility:k])
    answer: str  # the text with reflection tokens, paragraphs and end-of-text markers removed
    paragraphs: tuple[str, ...] = ()


_PARAGRAPH_RE = re.compile(re.escape(PARAGRAPH_OPEN) + r"(.*?)(?:" + re.escape(PARAGRAPH_CLOSE) + r"|\Z)", re.DOTALL)
_TOKEN_RE = re.compile("|".join(re.escape(t) for t in sorted(SPECIAL_TOKENS, key=len, reverse=True)))
_EOS_RE = re.compile(r"<\|[^|\n<>]{1,40}\|>|</s>|<s>")


def _strip_special(text: str, sep: str) -> str:
    """Remove paragraphs (an unclosed one runs to the end: it may be passage text), reflection
    tokens, stray tags and end-of-text markers, putting `sep` where they were."""
    text = _PARAGRAPH_RE.sub(sep, text)
    text = _TOKEN_RE.sub(sep, text)
    return _EOS_RE.sub(sep, text)


def _first(text: str, tokens: Sequence[str]) -> str | None:
    hits = [(text.find(t), t) for t in tokens if t in text]
    return min(hits)[1] if hits else None


def parse_output(text: str) -> ParsedOutput:
    """Parse a native Self-RAG model's raw output or a render_output sequence; tolerates missing parts.

    Tokens inside paragraphs are ignored (a passage cannot speak for the model).
    """
    paragraphs = tuple(m.group(1) for m in _PARAGRAPH_RE.finditer(text))
    outside = _PARAGRAPH_RE.sub("\n", text)
    retr = _first(outside, (RETRIEVAL, NO_RETRIEVAL))
    retrieval = True if retr == RETRIEVAL or paragraphs else False if retr == NO_RETRIEVAL else None
    use = _first(outside, UTILITY_TOKENS)
    return ParsedOutput(
        retrieval=retrieval,
        relevance=_first(outside, RELEVANCE_TOKENS),
        support=_first(outside, SUPPORT_TOKENS),
        utility=None if use is None else UTILITY_TOKENS.index(use) + 1,
        answer=_strip_special(text, "").strip(),
        paragraphs=paragraphs,
    )


# --------------------------------------------------------------------------- answer extraction
#
# extract_choice reads the option letter a model chose, never guessing. Tiers, first hit wins:
#  1. explicit cues, in any of our languages (models mix them): a cue noun (`Answer`, `答案`,
#     `Réponse`, `Antwort`, `Risposta`, `答え`, `正解`, `option`, ...) followed by a colon or a
#     copula (`is`, `est`, `ist`, `lautet`, `è`, `是`, `は`, ...), and Chinese `故选`. The text after
#     the cue (that line, or the next line when it is empty) must start with a letter
#     (`D`, `D.`, `(D)`, `<D>`, `Option D`; after a cue also lowercase `d`, `d.`, `(d)` standing alone,
#     never the first letter of a word: "the answer is a good one" names none; abbreviated cues
#     `Ans.`, `Rép. :`, `Antw.:`, `Risp.:` count) or be exactly one option's text; a second letter on the
#     same line (`C or D`) makes that cue ambiguous; a colon-less cue ("the answer is B) x. But A)
#     ...") reads to the end of its sentence only. When cues name different letters the output
#     is ambiguous -> None. Data note: in the CALM release's samples that happens in 10 of 16,182
#     Llama outputs and 209 of 16,182 Mistral outputs; on the Mistral ones the first cue matches
#     the gold letter 27% of the time and the last 33%, so neither is the model's answer -> None.
#  2. answer-after forms: `D is the correct answer`, `D est la bonne réponse`, `选项D是正确`,
#     `Dが正解`: used only when they all name one letter.
#  3. the first non-empty line is itself an answer (`(B) Tell the attending`, `C. Briefkasten`)
#     or the whole output is one option's text.

_WORD = r"[A-Za-zÀ-ÿ]"
_CUE_NOUNS = (
    r"final answer|answer|réponse|reponse|antwort|risposta|rispondi|solution|lösung|soluzione|option|choice"
    r"|正确答案|答案|回答|解答|答题|答え|正解|答|"
    # plus every language's own cue, so a language added to languages.py is read too
    + "|".join(sorted({re.escape(lt.answer_cue.rstrip(" :：")) for lt in LANGUAGES.values()}, key=len, reverse=True))
)
_COPULA_NOUNS = r"选项|選択肢"  # "选项：" usually heads a list of options, so these need a copula
_CUE_ADJ = r"correcte|correct|juste|finale|exacte|corretta|giusta|esatta|richtige|korrekte"
_COPULA = (
    rf"(?:is|would be|will be|est|sera|serait|ist|lautet|wäre|è|é|sarebbe)(?!{_WORD}|n't|n’t)"
    r"|应该是|应是|应为|是|为|為|选|は"
)
_FILLER = r"therefore|thus|then|clearly|donc|alors|daher|also|somit|quindi|dunque|pertanto|因此|所以"
_CUE_RE = re.compile(
    rf"(?i:(?<!{_WORD})(?:{_CUE_NOUNS})(?:\s+(?:{_CUE_ADJ}))?"
    rf"(?:\s*(?:{_COPULA})(?:\s*(?:{_FILLER})(?!{_WORD}))?\s*:?|\s*:))"
    rf"|(?:{_COPULA_NOUNS})\s*(?:{_COPULA})\s*:?"
    r"|(?i:lautet\s+die\s+(?:richtige\s+|korrekte\s+)?antwort)\s*:?"
    # abbreviated cues (`Ans. B`, `Rép. : c`, `Antw.: D`, `Risp: b`): a dot or a colon, never a copula;
    # `Ans` capitalised only, since French `ans` (years) ends many sentences
    rf"|(?<!{_WORD})(?:Ans|ANS|(?i:r[ée]p|antw|risp))(?:\.\s*:?|\s*:)"
    r"|(?:故|所以|因此|因而|应|應|我)(?:选择|选|選)(?=\s*[A-Z])"
)
# the letter must open a sentence or follow an option word: "(A, B, C, D, E) è corretta" is a list
_POST_LEAD = (
    r"(?:^|[\n.!?。！？]\s*|(?i:option|choice|opzione|l'option|l’option|l'opzione|l’opzione)\s*|选项|選択肢)"
)
_POST_RE = re.compile(
    rf"{_POST_LEAD}\(?([A-Z])\)?"
    r"(?:\s*[.:]?\s*(?:\"[^\"\n]{0,60}\"|“[^”\n]{0,60}”))?\s*,?\s*"
    r"(?i:(?:is|would be|est|ist|è)\s+(?:donc\s+|daher\s+|quindi\s+|therefore\s+)?(?:the\s+|la\s+|die\s+)?"
    r"(?:correct|right|best|bonne|meilleure|richtige|korrekte|corretta|giusta|risposta corretta))"
    r"|(?:选项|選択肢)\s*([A-Z])\s*(?:是|为)?(?:正确|最正确|最佳|最合适)"
    rf"|(?:{_POST_LEAD}|[、，,](?<![A-Z][、，,]))([A-Z])"  # "、Aが正解" but not the list "A、Cが正解"
    r"(?:\s*[.:]?\s*[(（「“\"][^)）」”\"\n]{1,30}[)）」”\"])?\s*(?:が|は)?\s*正解",
    re.MULTILINE,
)
_LEAD_RE = re.compile(
    r"""^[\s"'“”‘’「」『』《<\[【]*(?i:(?:the\s+)?(?:option|choice|opzione|l'option|选项|選択肢)\s*)?"""
    r"(?:\(([A-Z])\)|([A-Z]))(?![A-Za-z])"
)
# after a cue only: a lowercase letter (`the answer is b`, `答案是d`, `Risposta: (d)`) standing alone,
# followed by punctuation, a space or CJK text, never a word that starts with it ("a good", "e.g.")
_LOWER_LEAD_RE = re.compile(
    r"""^[\s"'“”‘’「」『』《<\[【]*(?i:(?:the\s+)?(?:option|choice|opzione|l'option|选项|選択肢)\s*)?"""
    r"(?:\(([a-z])\)|([a-z])(?=[.):,;。、]?(?:\s|$|[\u3040-\u30ff\u3400-\u9fff])))"
)
_OTHER_LOWER_RE = re.compile(
    r"(?<![A-Za-z])(?:\(([a-z])\)|([a-z])(?=\s*(?:[.)\]>:,、。;；/]|$)))"
    r"|(?:(?<![A-Za-z])(?:or|and|ou|et|oder|und|o|e)\s+|[,、，]\s*|或者|或|和|または|と|か)([a-z])(?![A-Za-z])"
)
_OTHER_LETTER_RE = re.compile(
    r"(?<![A-Za-z])(?:\(([A-Z])\)|([A-Z])(?=\s*(?:[.)\]>:,、。;；/]|$))"
    r"|(?:or|and|ou|et|oder|und|o|e|或|或者|和|または|と|か)\s*([A-Z])(?![A-Za-z]))"
)
_EXPLANATION_RE = re.compile(r"^\s*(?i:explanation|explication|erklärung|erläuterung|spiegazione|解释|説明)\s*:")
_EDGE = "\"'“”‘’「」『』《》<>()[]【】.,;:!?。、，；：！？_ \t\n"

_AMBIGUOUS = "?"  # internal marker: this piece of text names more than one letter


def _norm(text: str) -> str:
    return " ".join(text.casefold().split()).strip(_EDGE)


def _option_table(options: Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    """letter -> normalised option text ('' when unknown)."""
    if options is None:
        return {letter: "" for letter in "ABCDE"}
    if isinstance(options, Mapping):
        table = {}
        for key, text in options.items():
            letter = str(key).strip().strip("().").upper()
            if len(letter) != 1 or not "A" <= letter <= "Z":
                raise ValueError(f"option key {key!r} is not a letter A-Z; pass options as {{'A': 'text', ...}}")
            table[letter] = _norm(unicodedata.normalize("NFKC", str(text)))
        return table
    items = [str(s).strip() for s in options]
    if all(len(s) == 1 and "A" <= s.upper() <= "Z" for s in items):
        return {s.upper(): "" for s in items}
    if len(items) > 26:
        raise ValueError(f"{len(items)} options; at most 26 (A-Z) are supported")
    return {chr(65 + i): _norm(unicodedata.normalize("NFKC", s)) for i, s in enumerate(items)}


def _match_text(span: str, table: Mapping[str, str]) -> str | None:
    """The letter whose option text is the span, or starts it followed by punctuation or the end
    (`schools.` yes, `schools because` no); _AMBIGUOUS when two letters share that text."""
    s = _norm(span)
    best_len, best = 0, set()
    for letter, opt in table.items():
        if not opt or not s.startswith(opt):
            continue
        rest = s[len(opt):]
        if rest[:1].isalnum() or (rest[:1] == " " and rest[1:2].isalnum()):
            continue
        if len(opt) > best_len:
            best_len, best = len(opt), {letter}
        elif len(opt) == best_len:
            best.add(letter)
    if not best:
        return None
    return best.pop() if len(best) == 1 else _AMBIGUOUS


def _after_option(rest: str, opt: str) -> str | None:
    """`rest` without the option's own text at its start, or None when it does not start with it."""
    if not opt:
        return None
    body = rest.lstrip(_EDGE)
    m = re.match(r"\s+".join(re.escape(w) for w in opt.split()), body, re.IGNORECASE)
    if not m or re.match(r"\w| \w", body[m.end():]):  # "town hall" does not start with option "town"
        return None
    return body[m.end():]


def _read_span(span: str, table: Mapping[str, str], sentence: bool = False) -> str | None:
    """The letter a span of answer text names: a leading letter, or exactly one option's text.

    Another letter later in the span makes it _AMBIGUOUS; with `sentence` (prose cues such as
    "the answer is B) relief. However, A) ...") only the rest of the first sentence counts."""
    m = _LEAD_RE.match(span)
    letter = m and (m.group(1) or m.group(2))
    lower = None
    if not letter or letter not in table:
        lower = _LOWER_LEAD_RE.match(span)
        letter = lower and (lower.group(1) or lower.group(2)).upper()
        if not letter or letter not in table:
            return _match_text(span, table)
        m = lower
    rest = span[m.end():]
    after = _after_option(rest, table[letter])
    if m.group(2) and after is None and re.match(r"[ \t]+[a-zà-ÿ]", rest):
        return _match_text(span, table)  # "A town hall", "E la risposta": a word, not a letter
    scan = rest if after is None else after
    if sentence:
        scan = re.split(r"[.!?。！？](?:\s|$)|[;；]", scan.lstrip(" .):"), maxsplit=1)[0]
    others = {next(g for g in o.groups() if g) for o in _OTHER_LETTER_RE.finditer(scan)}
    if lower:  # a lowercase answer letter: lowercase letters after it are other answers too ("a, b")
        others |= {next(g for g in o.groups() if g).upper() for o in _OTHER_LOWER_RE.finditer(scan)}
    return _AMBIGUOUS if others & (set(table) - {letter}) else letter


def _cue_reads(text: str, table: Mapping[str, str]) -> list[str | None]:
    """What each cue names: the rest of its line (the next non-empty line when that is empty);
    a cue without a colon ("the answer is") reads only to the end of its sentence."""
    reads = []
    for m in _CUE_RE.finditer(text):
        line_end = text.find("\n", m.end())
        span = text[m.end():] if line_end < 0 else text[m.end():line_end]
        if not span.strip() and line_end >= 0:
            span = text[line_end:].lstrip().split("\n", 1)[0]
        reads.append(_read_span(span, table, sentence=":" not in m.group(0)))
    return reads


def _decide(reads: Iterable[str | None]) -> str | None:
    letters = {r for r in reads if r is not None}
    return letters.pop() if len(letters) == 1 and _AMBIGUOUS not in letters else None


def _clean(text: str) -> str:
    text = _strip_special(text, "\n")
    text = unicodedata.normalize("NFKC", text).replace("\r\n", "\n").replace("\r", "\n")
    return text.replace("*", "").replace("`", "")


def extract_choice(text: str, lang: str, options: Mapping[str, str] | Sequence[str] | None = None) -> str | None:
    """The option letter a model output chose, or None when it names none or several.

    `options` is a dict letter -> text, a list of option texts (lettered A, B, ...) or of letters,
    or None (letters A-E, texts unknown). Letters are upper case (full-width ones too); an
    option's text counts only as the whole answer (`Answer: schools.`), never as a substring of a
    sentence. Cues of every language count, since models mix languages; `lang` is validated and
    kept for language-specific rules. See the tier comment above.
    """
    check_lang(lang)
    table = _option_table(options)
    t = _clean(text or "")
    cue_reads = _cue_reads(t, table)
    if any(r is not None for r in cue_reads):
        return _decide(cue_reads)
    post = [next(g for g in m.groups() if g) for m in _POST_RE.finditer(t)]
    post = [p for p in post if p in table]
    if post:
        return _decide(post)
    first = _EXPLANATION_RE.sub("", t.strip().split("\n", 1)[0], count=1)
    m = _LEAD_RE.match(first)
    if m and (m.group(1) or re.match(r"\s*(?:[.):]|$)", first[m.end():])):
        return _decide([_read_span(first, table)])
    return _decide([_match_text(t, table)])


_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str, keep_lines: bool = False) -> str:
    """Text safe for a terminal: control characters (escape sequences, carriage returns, bidi overrides) from a
    corpus or a model output are dropped; tabs and (unless keep_lines) line breaks become spaces."""
    text = str(text).replace("\r\n", "\n")
    text = re.sub(r"\t" if keep_lines else r"[\n\t]", " ", text)
    return _CONTROL_RE.sub("", text)
