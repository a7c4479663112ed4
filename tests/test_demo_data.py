"""The shipped demo corpus and demo questions: schema, parallelism, and that every question is
answerable from a demo passage in every language (so `make demo` retrieves something useful)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from calm_rag.languages import DEFAULT_LANGS, LANGUAGES

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "calm_rag" / "data" / "demo"  # shipped as package data
QUESTIONS = REPO / "calm_rag" / "data" / "demo_questions"
LANGS = DEFAULT_LANGS  # en, zh, fr, de, it, ja
FIELDS = ["id", "title", "contents", "lang", "source"]
SOURCES = {"med": "demo-medical", "cs": "demo-commonsense"}
ID_RE = re.compile(r"^demo-(med|cs)-(\d{4})-([a-z]{2})$")
OPTION_RE = re.compile(r"^([A-E])\. (\S.*)$")
LETTERS = "ABCDE"


def _read_corpus(lang: str) -> list[dict]:
    path = CORPUS / f"{lang}.jsonl"
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            pytest.fail(f"{path}:{lineno}: not valid JSON ({exc.msg})")
    return rows


@pytest.fixture(scope="module")
def corpus() -> dict[str, list[dict]]:
    return {lang: _read_corpus(lang) for lang in LANGS}


@pytest.fixture(scope="module")
def by_id(corpus) -> dict[str, dict]:
    return {row["id"]: row for rows in corpus.values() for row in rows}


@pytest.fixture(scope="module")
def questions() -> dict[str, list[dict]]:
    return {lang: json.loads((QUESTIONS / f"{lang}.json").read_text(encoding="utf-8")) for lang in LANGS}


@pytest.fixture(scope="module")
def support() -> list[dict]:
    return json.loads((QUESTIONS / "support.json").read_text(encoding="utf-8"))


def _split_input(text: str, lang: str, where: str) -> tuple[str, list[str]]:
    """(question, [option texts A..E]) from a CALM-release input; checks the layout on the way."""
    lines = text.split("\n")
    assert len(lines) == 7, f"{where}: expected question, 5 option lines and the answer cue, got {len(lines)} lines"
    assert lines[-1] == LANGUAGES[lang].answer_cue, f"{where}: last line {lines[-1]!r} is not the {lang} answer cue"
    options = []
    for letter, line in zip(LETTERS, lines[1:6], strict=True):
        m = OPTION_RE.match(line)
        assert m and m.group(1) == letter, f"{where}: option line {line!r} should start with '{letter}. '"
        options.append(m.group(2).strip())
    assert lines[0].strip(), f"{where}: empty question"
    return lines[0], options


# ------------------------------------------------------------------------------------ corpus


def test_corpus_lines_have_exactly_the_five_nonempty_string_fields(corpus):
    for lang, rows in corpus.items():
        assert rows, f"{lang}.jsonl is empty"
        for i, row in enumerate(rows, 1):
            where = f"calm_rag/data/demo/{lang}.jsonl:{i}"
            assert isinstance(row, dict), where
            assert list(row) == FIELDS, f"{where}: fields {list(row)}, expected exactly {FIELDS} in that order"
            for f in FIELDS:
                assert isinstance(row[f], str) and row[f].strip() == row[f] and row[f], f"{where}: bad {f!r}"
            assert "\n" not in row["title"], f"{where}: title must be one line"


def test_corpus_ids_unique_lang_and_source_match(corpus):
    seen: set[str] = set()
    for lang, rows in corpus.items():
        for i, row in enumerate(rows, 1):
            where = f"calm_rag/data/demo/{lang}.jsonl:{i}"
            m = ID_RE.match(row["id"])
            assert m, f"{where}: id {row['id']!r} does not match demo-<med|cs>-<NNNN>-<lang>"
            kind, _, id_lang = m.groups()
            assert row["lang"] == lang == id_lang, f"{where}: lang {row['lang']!r} / id suffix {id_lang!r} != {lang}"
            assert row["source"] == SOURCES[kind], f"{where}: source {row['source']!r} != {SOURCES[kind]!r}"
            assert row["id"] not in seen, f"{where}: duplicate id {row['id']}"
            seen.add(row["id"])


def test_corpus_is_parallel_balanced_and_small(corpus):
    bases = {lang: {row["id"].rsplit("-", 1)[0] for row in rows} for lang, rows in corpus.items()}
    everywhere = set.intersection(*bases.values())
    assert len(everywhere) >= 40, f"only {len(everywhere)} passages exist in all six languages"
    for lang, rows in corpus.items():
        assert 45 <= len(rows) <= 65, f"{lang}: {len(rows)} passages, expected about 50-60"
        kinds = [row["source"] for row in rows]
        med, cs = kinds.count("demo-medical"), kinds.count("demo-commonsense")
        assert abs(med - cs) <= 6, f"{lang}: {med} medical vs {cs} commonsense passages; keep them about half-half"
    # a numbered passage is either parallel (all six languages) or in exactly one language
    for base in set.union(*bases.values()) - everywhere:
        holders = [lang for lang in LANGS if base in bases[lang]]
        assert len(holders) == 1, f"{base} exists in {holders}: write it in all six languages or in one"
    total = sum((CORPUS / f"{lang}.jsonl").stat().st_size for lang in LANGS)
    assert total < 200_000, f"demo corpus is {total} bytes; keep it under 200 KB"


def test_parallel_passages_agree_on_numbers(corpus):
    """Translations must keep the facts: every number in the English passage appears in each version."""
    en = {row["id"][:-3]: row for row in corpus["en"]}
    for lang in LANGS[1:]:
        for row in corpus[lang]:
            src = en.get(row["id"][:-3])
            if src is None:
                continue
            for num in re.findall(r"\d+", src["contents"].replace(",", "")):
                assert num in row["contents"].replace(" ", "").replace("\u202f", ""), \
                    f"{row['id']}: number {num} of {src['id']} is missing"


def test_project_loader_reads_the_demo_corpus():
    from calm_rag.corpora import read_jsonl_documents

    for lang in LANGS:
        docs = list(read_jsonl_documents(CORPUS / f"{lang}.jsonl"))
        assert docs and {d.lang for d in docs} == {lang}


# ------------------------------------------------------------------------------------ questions


def test_questions_are_calm_format_and_parallel(questions):
    golds = None
    for lang, items in questions.items():
        assert isinstance(items, list) and len(items) == 24, f"{lang}.json: expected a list of 24 questions"
        assert len({item["instruction"] for item in items}) == 1, f"{lang}.json: one instruction per language"
        instruction = items[0]["instruction"]
        text = LANGUAGES[lang]
        for cue in (text.explanation_cue, text.answer_cue):
            assert cue in instruction, f"{lang}.json: instruction should show the output format with {cue!r}"
        for i, item in enumerate(items):
            where = f"calm_rag/data/demo_questions/{lang}.json item {i}"
            assert set(item) == {"instruction", "input", "output"}, f"{where}: keys {sorted(item)}"
            _, options = _split_input(item["input"], lang, where)
            assert item["output"] in LETTERS, f"{where}: gold {item['output']!r} is not one of A-E"
            assert len(set(options)) == 5, f"{where}: duplicate options"
        lang_golds = [item["output"] for item in items]
        golds = golds or lang_golds
        assert lang_golds == golds, f"{lang}.json: gold letters differ from {LANGS[0]}.json"
    assert len(set(golds)) == 5, "use every letter A-E as a gold answer somewhere"


def test_project_loader_parses_the_demo_questions():
    from calm_rag.qa import align_parallel, load_questions

    sets = {lang: load_questions(QUESTIONS / f"{lang}.json") for lang in LANGS}
    aligned = align_parallel(sets)
    assert len(aligned) == 24 and not aligned.mismatches, [m.description for m in aligned.mismatches]
    for qs in sets.values():
        assert all(list(q.options) == list(LETTERS) and q.gold for q in qs)


def test_every_question_is_supported_by_a_passage_in_every_language(questions, support, by_id):
    assert [s["index"] for s in support] == list(range(24)), "support.json: one entry per question, in order"
    domains = [s["passage"].split("-")[1] for s in support]
    assert domains.count("med") == 12 and domains.count("cs") == 12, "expected 12 medical + 12 commonsense"
    for s in support:
        for lang in LANGS:
            pid = f"{s['passage']}-{lang}"
            assert pid in by_id, f"support.json: passage {pid} is missing from calm_rag/data/demo/{lang}.jsonl"
            passage = by_id[pid]
            item = questions[lang][s["index"]]
            where = f"{lang} question {s['index']}"
            _, options = _split_input(item["input"], lang, where)
            term = s["key_terms"][lang].casefold()
            gold = LETTERS.index(item["output"])
            assert term in options[gold].casefold(), f"{where}: key term {term!r} not in gold option {options[gold]!r}"
            for k, opt in enumerate(options):
                if k != gold:
                    assert term not in opt.casefold(), f"{where}: key term {term!r} also in distractor {opt!r}"
            text = f"{passage['title']}\n{passage['contents']}".casefold()
            assert term in text, f"{where}: key term {term!r} does not occur in supporting passage {pid}"
