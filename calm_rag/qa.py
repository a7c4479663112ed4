"""Load multiple-choice QA sets into `Question`s, align parallel languages, split train/dev.

Formats: the CALM release's JSON (`instruction`/`input`/`output`), X-CSR JSONL, MedQA JSONL and
Hugging Face datasets. Ids are `<dataset>-<index>` (or the file's own id) and carry no language,
so the same question has the same id in every language and parallel files align by position.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .languages import LANGUAGES, check_lang
from .records import Generation, Question

logger = logging.getLogger(__name__)

FORMATS = ("auto", "calm", "xcsr", "medqa", "hf")
# the demo questions (<lang>.json, CALM release format), shipped as package data
DEMO_QUESTIONS = Path(__file__).resolve().parent / "data" / "demo_questions"


class QAFormatError(ValueError):
    """A QA file or item that cannot be read; the message names the file, the item and the fix."""


# ---------------------------------------------------------------------------------------------
# option parsing

# Lines such as "A. town" or "(A) Radial nerve" or "(D)强力霉素".
# "(UNE)" is how a machine translation into French wrote "(A)" in MedQA-USMLE fr item 154.
_OPTION_LINE = re.compile(r"^\s*(?:[(（]\s*([A-Z]|UNE)\s*[)）]|([A-Z])[.．)）])\s*(.*?)\s*$")
# not after a letter or digit, so "Rh(D)" inside an option is not a marker
_INLINE_MARK = re.compile(r"(?<![A-Za-z0-9])[(（]\s*([A-Z])\s*[)）]")
# Question prefixes the release puts before the stem (sometimes twice: "Frage:Frage:").
_PREFIXES = ("Question", "Frage", "Domanda", "質問", "问题", "問題", "Pregunta")
_PREFIX_RE = re.compile(r"^\s*(?:" + "|".join(map(re.escape, _PREFIXES)) + r")\s*[:：]\s*")
# Answer cues left at the end of an input ("Answer:\nAntwort:", "答え:"): every cue we know.
_CUES = {"Answer", "Antwort", "Risposta", "Réponse", "Reponse", "答え", "答案", "回答", "Respuesta"}
for _lt in LANGUAGES.values():
    _CUES.add(_lt.answer_cue.rstrip(" :：").strip())
_CUE_LINE = re.compile(r"^\s*(?:" + "|".join(map(re.escape, sorted(_CUES))) + r")\s*[:：]?\s*$")


class OptionParseError(ValueError):
    """No option block found in a question text."""


def _strip_cues(lines: list[str]) -> list[str]:
    """Drop trailing blank lines, answer cues and stray closing quotes (USMLE item 310: '"')."""
    while lines and (not lines[-1].strip(" \t\"'”’»«") or _CUE_LINE.match(lines[-1])):
        lines.pop()
    return lines


def _line_options(lines: list[str]) -> tuple[list[str], dict[str, str]] | None:
    """Options as the trailing block of lines lettered A, B, C, ... in order."""
    block: list[tuple[str, str]] = []
    for i in range(len(lines) - 1, -1, -1):
        m = _OPTION_LINE.match(lines[i])
        if m:
            letter = m.group(1) or m.group(2)
            block.insert(0, ("A" if letter == "UNE" else letter, m.group(3)))
        else:
            # A marker mangled by translation between two good options: "(Cage" for "(C) Age"
            # (USMLE fr item 281), "（光盘" for "(C) D" (USMLE zh item 409).
            expected = chr(ord(block[0][0]) - 1) if block else "@"
            above = _OPTION_LINE.match(lines[i - 1]) if i > 0 else None
            above_ok = expected == "A" or (above is not None and (above.group(1) or above.group(2)) == chr(ord(expected) - 1))
            broken = re.match(r"^\s*[(（]\s*(.+)$", lines[i])
            if not (expected >= "A" and broken and above_ok):
                break
            text = broken.group(1)
            text = text[1:].strip() if text.startswith(expected) and len(text) > 1 else text.strip()
            logger.warning("option line %r has a broken marker; read as option %s: %r", lines[i], expected, text)
            block.insert(0, (expected, text))
        if block[0][0] == "A":
            letters = [letter for letter, _ in block]
            if letters == [chr(ord("A") + k) for k in range(len(block))] and len(block) >= 2:
                return lines[:i], dict(block)
            return None
    return None


def _inline_options(text: str) -> tuple[str, dict[str, str]] | None:
    """Options written inline "(A) .. (B) ..": the last run of markers A, B, C, ... in order."""
    marks = list(_INLINE_MARK.finditer(text))
    for start in range(len(marks) - 1, -1, -1):
        if marks[start].group(1) != "A":
            continue
        run = marks[start:]
        # the options close the text: the markers from this "(A)" on must read A, B, C, ...
        if len(run) < 2 or [m.group(1) for m in run] != [chr(ord("A") + k) for k in range(len(run))]:
            continue
        options = {}
        for k, m in enumerate(run):
            end = run[k + 1].start() if k + 1 < len(run) else len(text)
            options[m.group(1)] = text[m.end():end].strip()
        return text[:run[0].start()], options
    return None


def parse_question_text(text: str) -> tuple[str, dict[str, str]]:
    """Split a question text into (stem, options): options on their own lines or inline.

    Strips the release's question prefixes (`Frage:`, `質問:`, ...) and trailing answer cues.
    Raises OptionParseError when no option block (at least A and B) is found.
    """
    lines = _strip_cues(text.replace("\r\n", "\n").split("\n"))
    found = _line_options(lines)
    if found is not None:
        stem_lines, options = found
        stem = "\n".join(stem_lines)
    else:
        inline = _inline_options("\n".join(lines))
        if inline is None:
            raise OptionParseError("no options found: expected lines 'A. ..'/'(A) ..' or inline '(A) .. (B) ..'")
        stem, options = inline
    while True:  # "Frage:Frage: ..." happens in the authors' files
        new = _PREFIX_RE.sub("", stem, count=1)
        if new == stem:
            break
        stem = new
    stem = stem.strip()
    empty = [k for k, v in options.items() if not v]
    if empty:
        raise OptionParseError(f"option(s) {empty} have no text")
    if not stem:
        raise OptionParseError("the question stem is empty")
    return stem, options


_GOLD = re.compile(r"^\s*\(?\s*([A-Za-z])\s*(?:[).．:：]|\s|$)")


def parse_gold(value: Any, options: Mapping[str, str]) -> str | None:
    """Gold letter from 'C', '(D) Cross-linking of DNA', 'D. schools', or an int index; None if empty."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise ValueError(f"gold answer {value!r} is not a letter or an index")
    if isinstance(value, int):
        letters = list(options)
        if not 0 <= value < len(letters):
            raise ValueError(f"gold index {value} is out of range for {len(letters)} options")
        return letters[value]
    m = _GOLD.match(str(value))
    if not m:
        # the gold may be the option's text itself
        matches = [k for k, v in options.items() if v.strip() == str(value).strip()]
        if len(matches) == 1:
            return matches[0]
        raise ValueError(f"gold answer {str(value)[:60]!r} is neither a letter nor an option text")
    letter = m.group(1).upper()
    if letter not in options:
        raise ValueError(f"gold letter {letter} is not among the options {list(options)}")
    return letter


# ---------------------------------------------------------------------------------------------
# rows -> Question


def _options_from_value(value: Any) -> dict[str, str]:
    """Options from a dict letter->text, a list of texts, a list of {label,text}/{key,value}, or
    the HF columnar form {"label": [...], "text": [...]}."""
    if isinstance(value, Mapping):
        if "label" in value and "text" in value and isinstance(value["label"], list):
            return {str(k).strip(): str(v).strip() for k, v in zip(value["label"], value["text"], strict=True)}
        return {str(k).strip(): str(v).strip() for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        out: dict[str, str] = {}
        for k, item in enumerate(value):
            if isinstance(item, Mapping):
                label = item.get("label", item.get("key"))
                text = item.get("text", item.get("value"))
                if label is None or text is None:
                    raise ValueError(f"choice {k} has keys {sorted(item)}; expected label/text or key/value")
                out[str(label).strip()] = str(text).strip()
            else:
                out[chr(ord("A") + k)] = str(item).strip()
        return out
    raise ValueError(f"options must be a dict, a list or label/text columns, got {type(value).__name__}")


def _check_options(options: dict[str, str]) -> None:
    if len(options) < 2:
        raise ValueError(f"need at least 2 options, got {len(options)}")
    bad = [k for k in options if not re.fullmatch(r"[A-Z]", k)]
    if bad:
        raise ValueError(f"option labels must be single capital letters, got {bad}")
    empty = [k for k, v in options.items() if not v]
    if empty:
        raise ValueError(f"option(s) {empty} have no text")


@dataclass(frozen=True)
class Columns:
    """Where a row keeps each field (a column name; dotted for nesting, e.g. "question.stem")."""

    stem: str = "question"
    options: str = "options"
    gold: str | None = "answer_idx"
    id: str | None = None
    lang: str | None = None
    instruction: str | None = None


XCSR_COLUMNS = Columns(stem="question.stem", options="question.choices", gold="answerKey", id="id", lang="lang")
MEDQA_COLUMNS = Columns(stem="question", options="options", gold="answer_idx")


def _get(row: Mapping[str, Any], path: str | None) -> Any:
    if path is None:
        return None
    value: Any = row
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _row_to_question(row: Mapping[str, Any], cols: Columns, index: int, lang: str | None,
                     dataset: str, where: str) -> Question:
    stem = _get(row, cols.stem)
    if not isinstance(stem, str) or not stem.strip():
        raise QAFormatError(f"{where}: missing question text in field {cols.stem!r} "
                            f"(keys: {sorted(row)}); pass columns= to name it")
    raw_options = _get(row, cols.options)
    try:
        if raw_options is None:
            raise ValueError(f"missing options field {cols.options!r} (keys: {sorted(row)})")
        options = _options_from_value(raw_options)
        _check_options(options)
        gold = parse_gold(_get(row, cols.gold), options)
    except ValueError as exc:
        raise QAFormatError(f"{where}: {exc}") from exc
    row_lang = _get(row, cols.lang)
    code = lang or row_lang
    if not code:
        raise QAFormatError(f"{where}: no language: pass lang= (calm eval: --langs) or add a "
                            f"{cols.lang or 'lang'!r} field")
    if lang and row_lang and str(row_lang).lower() != lang:
        raise QAFormatError(f"{where}: item language {row_lang!r} differs from lang={lang!r}")
    qid = _get(row, cols.id)
    return Question(
        id=str(qid) if qid not in (None, "") else f"{dataset}-{index}",
        lang=check_lang(str(code), where),
        stem=stem.strip(),
        options=options,
        gold=gold,
        dataset=dataset,
        instruction=str(_get(row, cols.instruction) or ""),
    )


def _calm_item_to_question(item: Any, index: int, lang: str, dataset: str, where: str) -> Question:
    if not isinstance(item, Mapping) or "input" not in item:
        raise QAFormatError(f"{where}: expected an object with 'instruction', 'input', 'output'")
    try:
        stem, options = parse_question_text(str(item["input"]))
        gold = parse_gold(item.get("output"), options)
    except ValueError as exc:
        raise QAFormatError(f"{where}: {exc}") from exc
    return Question(id=f"{dataset}-{index}", lang=lang, stem=stem, options=options, gold=gold,
                    dataset=dataset, instruction=str(item.get("instruction") or ""))


# ---------------------------------------------------------------------------------------------
# files


def lang_from_path(path: Path) -> str | None:
    """`en.json` -> en; `x_csqa_cn_train.json` -> zh; otherwise a known code among the parts."""
    aliases = {"cn": "zh"}
    tokens = re.split(r"[_\-.]", path.stem.lower())
    for tok in tokens:
        tok = aliases.get(tok, tok)
        if tok in LANGUAGES:
            return tok
    for part in reversed(path.parent.parts):
        if part.lower() in LANGUAGES:
            return part.lower()
    return None


def _dataset_from_path(path: Path) -> str:
    """`.../xcsqa/train/en.json` -> "xcsqa-train"; `.../medqa/usmle/en.json` -> "medqa-usmle"."""
    parts = [p for p in path.parent.parts[-2:] if p not in ("/", "")]
    return "-".join(parts) or path.stem


def _read_records(path: Path) -> tuple[list[Any], bool]:
    """All items of a .json list or a JSONL file; returns (items, is_jsonl)."""
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise QAFormatError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
        return data, False
    items = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            items.append(None)
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if stripped.startswith("{") and _is_one_object(text):
                raise QAFormatError(f"{path}: one JSON object over several lines (pretty-printed), not a QA file; "
                                    "write a JSON list [...] of questions, or JSON Lines with one question object "
                                    "per line") from exc
            raise QAFormatError(f"{path}:{lineno}: not valid JSON ({exc.msg}); expected one object per line") from exc
    return items, True


def _is_one_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


def detect_format(item: Mapping[str, Any]) -> str:
    """Name the format of one record by its keys."""
    if "input" in item and ("output" in item or "instruction" in item):
        return "calm"
    if isinstance(item.get("question"), Mapping) and "choices" in item["question"]:
        return "xcsr"
    if "question" in item and "options" in item:
        return "medqa"
    raise QAFormatError(f"unrecognised record with keys {sorted(item)}: expected CALM "
                        "(instruction/input/output), X-CSR (question.stem/choices, answerKey) or "
                        "MedQA (question/options/answer_idx); convert the file to one of these (from Python, "
                        "load_questions(path, fmt=..., columns=...) maps other keys)")


def load_questions(path: Any, lang: str | None = None, fmt: str = "auto", *, dataset: str | None = None,
                   columns: Columns | Mapping[str, str] | None = None, split: str | None = None) -> list[Question]:
    """Load one QA set in one language (X-CSR files may mix languages; each row names its own).

    `path` is a file (.json list or .jsonl), a local dataset folder (`save_to_disk`), or a
    `datasets.Dataset`/`DatasetDict`. `lang` defaults to the file name (`en.json`). `columns`
    maps our fields to the rows' keys for JSONL and HF data (see `Columns`).
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r}: use one of {', '.join(FORMATS)}")
    cols = Columns(**columns) if isinstance(columns, Mapping) else columns
    if lang is not None:
        lang = check_lang(lang, "lang=")
    if not isinstance(path, (str, Path)):
        return _load_hf(path, lang, dataset or "hf", cols, split, where="dataset")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_dir() or fmt == "hf":
        import datasets  # heavy

        try:
            obj = datasets.load_from_disk(str(path))
        except FileNotFoundError as exc:
            raise QAFormatError(f"{path}: not a saved Hugging Face dataset folder ({exc}); "
                                "point at a .json/.jsonl file or a save_to_disk folder") from exc
        return _load_hf(obj, lang or lang_from_path(path), dataset or path.name, cols, split, where=str(path))
    items, is_jsonl = _read_records(path)
    lang = lang or lang_from_path(path)
    dataset = dataset or _dataset_from_path(path)
    out: list[Question] = []
    index = 0
    for pos, item in enumerate(items):
        where = f"{path}:{pos + 1}" if is_jsonl else f"{path}: item {pos}"
        if item is None:
            continue
        if not isinstance(item, Mapping):
            raise QAFormatError(f"{where}: expected a JSON object, got {type(item).__name__}")
        kind = fmt if fmt != "auto" else _detect(item, where)
        if kind == "calm":
            if lang is None:
                raise QAFormatError(f"{path}: cannot tell the language from the file name; name the file by its "
                                    "language (en.json) or pass lang= (calm eval: --langs)")
            out.append(_calm_item_to_question(item, index, lang, dataset, where))
        else:
            default = XCSR_COLUMNS if kind == "xcsr" else MEDQA_COLUMNS
            out.append(_row_to_question(item, cols or default, index, lang, dataset, where))
        index += 1
    if not out:
        raise QAFormatError(f"{path}: no questions found")
    logger.info("loaded %d questions from %s (%s)", len(out), path, lang)
    return out


def _detect(item: Mapping[str, Any], where: str) -> str:
    try:
        return detect_format(item)
    except QAFormatError as exc:
        raise QAFormatError(f"{where}: {exc}") from exc


def _default_columns(names: Sequence[str]) -> Columns:
    def first(*cands: str) -> str | None:
        return next((c for c in cands if c in names), None)

    if "question" in names and "choices" not in names and "options" not in names:
        return XCSR_COLUMNS  # nested X-CSR rows
    return Columns(stem=first("question", "stem", "sent1") or "question",
                   options=first("options", "choices", "endings") or "options",
                   gold=first("answer_idx", "answerKey", "answer", "label", "gold"),
                   id=first("id"), lang=first("lang", "language"), instruction=first("instruction"))


def _load_hf(obj: Any, lang: str | None, dataset: str, cols: Columns | None, split: str | None,
             where: str) -> list[Question]:
    if isinstance(obj, Mapping):  # a DatasetDict
        splits = list(obj.keys())
        if split is None:
            if len(splits) != 1:
                raise QAFormatError(f"{where}: a DatasetDict with splits {splits}; pass split=")
            split = splits[0]
        if split not in splits:
            raise QAFormatError(f"{where}: no split {split!r}; available: {splits}")
        obj = obj[split]
    cols = cols or _default_columns(list(obj.column_names))
    return [_row_to_question(row, cols, i, lang, dataset, f"{where}: row {i}") for i, row in enumerate(obj)]


def load_release_samples(path: str | Path, lang: str | None = None, dataset: str | None = None) -> list[Generation]:
    """The sampled answers (`pred`) of a CALM release file as Generations with `letter=None`.

    Ids match `load_questions` on the same file; fill letters with an extractor afterwards.
    """
    path = Path(path)
    items, _ = _read_records(path)
    lang = check_lang(lang or lang_from_path(path) or "", str(path))
    dataset = dataset or _dataset_from_path(path)
    out = []
    for index, item in enumerate(items):
        preds = item.get("pred") if isinstance(item, Mapping) else None
        if preds is None:
            continue
        if not isinstance(preds, list):
            raise QAFormatError(f"{path}: item {index}: 'pred' must be a list of strings")
        out.extend(Generation(question_id=f"{dataset}-{index}", lang=lang, sample=k, text=str(t), letter=None)
                   for k, t in enumerate(preds))
    return out


# ---------------------------------------------------------------------------------------------
# parallel sets


@dataclass(frozen=True)
class Mismatch:
    """One disagreement between the languages of an aligned question."""

    index: int  # position in the aligned set (-1: outside it, e.g. an extra item)
    question_id: str
    kind: str  # "missing", "option_count", "option_letters", "gold"
    values: dict[str, Any]  # lang -> the differing value
    description: str


@dataclass
class AlignedSet:
    """The same questions in several languages, position i in every list is one question."""

    langs: list[str]
    ids: list[str]
    by_lang: dict[str, list[Question]]
    mismatches: list[Mismatch] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def flagged(self, kinds: Sequence[str] | None = None) -> set[int]:
        return {m.index for m in self.mismatches if m.index >= 0 and (kinds is None or m.kind in kinds)}

    def drop(self, kinds: Sequence[str] | None = None) -> AlignedSet:
        """A copy without the questions that have a mismatch (of `kinds`, default all)."""
        bad = self.flagged(kinds)
        keep = [i for i in range(len(self.ids)) if i not in bad]
        remap = {old: new for new, old in enumerate(keep)}
        mism = [replace(m, index=remap[m.index]) for m in self.mismatches if m.index in remap]
        return AlignedSet(self.langs, [self.ids[i] for i in keep],
                          {lang: [qs[i] for i in keep] for lang, qs in self.by_lang.items()}, mism)


def align_parallel(sets: Mapping[str, Sequence[Question]], by: str = "position") -> AlignedSet:
    """Align per-language question lists by position (or by `id`) and report disagreements.

    Nothing is dropped silently: items present in only some languages are left out of the
    aligned set and reported as "missing"; option-count, option-letter and gold-letter
    differences stay in the set and are reported, so the caller can `drop()` them or keep them.
    The first language is the reference whose ids the aligned set uses.
    """
    if by not in ("position", "id"):
        raise ValueError(f"by={by!r}: use 'position' or 'id'")
    if not sets:
        raise ValueError("align_parallel needs at least one language")
    langs = list(sets)
    ref = langs[0]
    mismatches: list[Mismatch] = []
    if by == "position":
        n = min(len(qs) for qs in sets.values())
        for lang in langs:
            for i in range(n, len(sets[lang])):
                q = sets[lang][i]
                mismatches.append(Mismatch(-1, q.id, "missing", {lang: i},
                                           f"{lang} item {i} ({q.id}) has no counterpart: "
                                           f"the shortest language has {n} items"))
        rows = [{lang: sets[lang][i] for lang in langs} for i in range(n)]
    else:
        index = {}
        for lang in langs:
            seen: dict[str, Question] = {}
            for q in sets[lang]:
                if q.id in seen:
                    raise ValueError(f"align_parallel(by='id'): duplicate id {q.id!r} in {lang}")
                seen[q.id] = q
            index[lang] = seen
        order = [q.id for q in sets[ref]] + [qid for lang in langs[1:] for qid in index[lang] if qid not in index[ref]]
        rows = []
        for qid in order:
            have = [lang for lang in langs if qid in index[lang]]
            if len(have) < len(langs):
                lacking = [lang for lang in langs if lang not in have]
                mismatches.append(Mismatch(-1, qid, "missing", {lang: qid in index[lang] for lang in langs},
                                           f"question {qid} is missing in {', '.join(lacking)}"))
                continue
            rows.append({lang: index[lang][qid] for lang in langs})
    for i, row in enumerate(rows):
        qid = row[ref].id
        checks: list[tuple[str, Callable[[Question], Any]]] = [
            ("option_count", lambda q: len(q.options)),
            ("option_letters", lambda q: "".join(q.options)),
            ("gold", lambda q: q.gold),
        ]
        for kind, get in checks:
            values = {lang: get(q) for lang, q in row.items()}
            if len(set(values.values())) > 1:
                shown = ", ".join(f"{lang}={v}" for lang, v in values.items())
                mismatches.append(Mismatch(i, qid, kind, values,
                                           f"question {qid} (#{i}): {kind.replace('_', ' ')} differs: {shown}"))
                if kind == "option_count":
                    break  # letters differ too; one record is enough
    ids = [row[ref].id for row in rows]
    by_lang = {lang: [row[lang] for row in rows] for lang in langs}
    for m in mismatches:
        logger.info("align: %s", m.description)
    return AlignedSet(langs, ids, by_lang, mismatches)


def align_and_report(sets: Mapping[str, Sequence[Question]], by: str = "position", drop: bool = True) -> AlignedSet:
    """Aligned questions with every mismatch logged as a warning, and dropped when `drop`."""
    aligned = align_parallel(sets, by=by)
    for m in aligned.mismatches:
        logger.warning("question alignment: %s", m.description)
    return aligned.drop() if drop else aligned


def load_parallel(files: Mapping[str, Any], *, dataset: str | None = None, drop: bool = True) -> AlignedSet:
    """The one way from per-language QA files {lang: path} to aligned questions (runs, distillation;
    `calm eval --data` also takes files whose language it must find first)."""
    return align_and_report({lang: load_questions(path, lang=lang, dataset=dataset) for lang, path in files.items()},
                            drop=drop)


def split_train_dev(n_questions: int, dev_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Split question positions (shared by every language) into sorted train and dev lists.

    Splitting positions, not per-language items, keeps a question and its translations on one
    side, so the dev set never sees a training question in another language.
    """
    if n_questions < 0:
        raise ValueError(f"n_questions must be >= 0, got {n_questions}")
    if not 0.0 <= dev_fraction < 1.0:
        raise ValueError(f"dev_fraction must be in [0, 1), got {dev_fraction}")
    positions = list(range(n_questions))
    random.Random(seed).shuffle(positions)
    n_dev = round(n_questions * dev_fraction)
    return sorted(positions[n_dev:]), sorted(positions[:n_dev])
