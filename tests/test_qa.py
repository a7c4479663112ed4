"""Loaders on inline fixtures in every format, alignment reports, train/dev split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from calm_rag.qa import (AlignedSet, QAFormatError, align_parallel, load_questions, load_release_samples,
                         parse_question_text, split_train_dev)
from calm_rag.records import Question

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"

XCSQA_DE = {
    "instruction": "Beantworten Sie die Multiple-Choice-Frage.",
    "input": "Frage: Woher kamen diese Patienten?\nA. Stadt\nB. michigan\nC. Krankenhaus\nD. Schulen\nE. Bürogebäude\n\nAnswer:\nAntwort:",
    "output": "C",
    "pred": ["Erklärung: ...\n\nAntwort: D. Schulen", "Antwort: C", "Antwort: C"],
}
XCSQA_JA = {"instruction": "", "input": "質問: どこ？\nA. 町\nB. ミシガン\nC. 病院\nD. 学校\nE. オフィスビル\n答え:", "output": "C"}
USMLE_EN = {"instruction": "Think.", "input": "A 5-year-old boy ...?\n(A) Left\n(B) Right\n(C) Up\n(D) Superomedial quadrant\n",
            "output": "(D) Superomedial quadrant"}
MCMLE_ZH = {"instruction": "", "input": "最可能合并损伤的神经是（　　）。 (A) 桡神经 (B) 正中神经 (C) 腋神经 (D) 尺神经 ",
            "output": "(A) 桡神经"}


def write_json(path: Path, items) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_calm_release_xcsqa_prefix_and_cues(tmp_path):
    qs = load_questions(write_json(tmp_path / "xcsqa" / "train" / "de.json", [XCSQA_DE, XCSQA_DE]))
    assert [q.id for q in qs] == ["xcsqa-train-0", "xcsqa-train-1"]
    q = qs[0]
    assert q.lang == "de" and q.dataset == "xcsqa-train"
    assert q.stem == "Woher kamen diese Patienten?"
    assert list(q.options) == ["A", "B", "C", "D", "E"]
    assert q.options["E"] == "Bürogebäude" and q.gold == "C"
    assert q.instruction.startswith("Beantworten")
    ja = load_questions(write_json(tmp_path / "ja.json", [XCSQA_JA]))[0]
    assert ja.stem == "どこ？" and ja.options["E"] == "オフィスビル"


def test_calm_release_medqa_lines_and_inline(tmp_path):
    en = load_questions(write_json(tmp_path / "medqa" / "usmle" / "en.json", [USMLE_EN]))[0]
    assert en.options == {"A": "Left", "B": "Right", "C": "Up", "D": "Superomedial quadrant"}
    assert en.gold == "D" and en.id == "medqa-usmle-0"
    zh = load_questions(write_json(tmp_path / "medqa" / "mcmle" / "zh.json", [MCMLE_ZH]))[0]
    assert zh.options == {"A": "桡神经", "B": "正中神经", "C": "腋神经", "D": "尺神经"}
    assert zh.stem == "最可能合并损伤的神经是（　　）。" and zh.gold == "A"


def test_option_parsing_quirks():
    # a marker mangled by translation between two good options
    _, opts = parse_question_text("Q?\n(A) x\n(B) y\n(Cage\n(D) z")
    assert list(opts) == ["A", "B", "C", "D"] and opts["C"] == "age"
    # "(C )" with a space, inline
    _, opts = parse_question_text("Q ( ). (A) one (B) two (C ) three (D) four")
    assert opts["C"] == "three"
    # "Rh(D)" inside an option is not a marker; a stray closing quote line is ignored
    stem, opts = parse_question_text('Which?"\n(A) give if Rh(D) positive\n(B) none\n"')
    assert opts == {"A": "give if Rh(D) positive", "B": "none"} and stem == 'Which?"'
    # the stem keeps lines that merely start with a capital letter
    stem, _ = parse_question_text("A 5-year-old boy.\nB cells are low.\nA. x\nB. y")
    assert stem == "A 5-year-old boy.\nB cells are low."


def test_language_argument_overrides_file_name(tmp_path):
    qs = load_questions(write_json(tmp_path / "questions.json", [XCSQA_JA]), lang="ja")
    assert qs[0].lang == "ja"
    with pytest.raises(QAFormatError, match="pass lang="):
        load_questions(write_json(tmp_path / "questions2.json", [XCSQA_JA]))


def test_errors_name_file_item_and_problem(tmp_path):
    bad = dict(XCSQA_DE, input="Frage: Woher?\nAntwort:")
    path = write_json(tmp_path / "de.json", [XCSQA_DE, bad])
    with pytest.raises(QAFormatError, match=r"de\.json: item 1: no options found"):
        load_questions(path)
    path = write_json(tmp_path / "en.json", [dict(USMLE_EN, output="(E) nothing")])
    with pytest.raises(QAFormatError, match=r"en\.json: item 0: gold letter E is not among the options"):
        load_questions(path)
    path = tmp_path / "x.jsonl"
    path.write_text('{"question": "q", "options": {"A": "a", "B": "b"}, "answer_idx": "A"}\n{oops\n')
    with pytest.raises(QAFormatError, match=r"x\.jsonl:2: not valid JSON"):
        load_questions(path, lang="en")
    path = write_jsonl(tmp_path / "y.jsonl", [{"question": "q", "options": {"A": "a"}, "answer_idx": "A"}])
    with pytest.raises(QAFormatError, match=r"y\.jsonl:1: need at least 2 options"):
        load_questions(path, lang="en")


XCSR_ROWS = [
    {"id": "q-1", "lang": "fr", "question": {"stem": "Où ?", "choices": [
        {"label": "A", "text": "ville"}, {"label": "B", "text": "école"}, {"label": "C", "text": "mer"}]}, "answerKey": "B"},
    {"id": "q-2", "lang": "fr", "question": {"stem": "Quoi ?", "choices": [
        {"label": "A", "text": "un"}, {"label": "B", "text": "deux"}]}},
]
MEDQA_ROWS = [{"question": "Which nerve?", "answer": "Radial", "options": {"A": "Radial", "B": "Median", "C": "Ulnar", "D": "Axillary"},
               "meta_info": "step1", "answer_idx": "A"}]


def test_xcsr_jsonl(tmp_path):
    qs = load_questions(write_jsonl(tmp_path / "dev.jsonl", XCSR_ROWS))
    assert [q.id for q in qs] == ["q-1", "q-2"]
    assert qs[0].lang == "fr" and qs[0].options == {"A": "ville", "B": "école", "C": "mer"} and qs[0].gold == "B"
    assert qs[1].gold is None  # test sets have no answerKey
    with pytest.raises(QAFormatError, match="differs from lang='en'"):
        load_questions(tmp_path / "dev.jsonl", lang="en")


def test_medqa_jsonl(tmp_path):
    qs = load_questions(write_jsonl(tmp_path / "train.jsonl", MEDQA_ROWS), lang="en", dataset="medqa-us")
    assert qs[0].id == "medqa-us-0" and qs[0].gold == "A" and list(qs[0].options) == ["A", "B", "C", "D"]
    rows = [dict(MEDQA_ROWS[0], answer_idx="E")]
    with pytest.raises(QAFormatError, match=r"train2\.jsonl:1: gold letter E is not among"):
        load_questions(write_jsonl(tmp_path / "train2.jsonl", rows), lang="en")


def test_hf_dataset_and_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([{"q": "Which?", "choices": {"label": ["A", "B"], "text": ["x", "y"]}, "answerKey": "B"}])
    qs = load_questions(ds, lang="en", columns={"stem": "q", "options": "choices", "gold": "answerKey"}, dataset="toy")
    assert qs[0] == Question(id="toy-0", lang="en", stem="Which?", options={"A": "x", "B": "y"}, gold="B", dataset="toy")
    # default column guess, integer gold, list options
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list([{"question": "Q", "options": ["a", "b", "c"], "answer": 2}]),
                               "test": datasets.Dataset.from_list([{"question": "Q", "options": ["a", "b", "c"], "answer": 0}])})
    with pytest.raises(QAFormatError, match="pass split="):
        load_questions(dd, lang="zh")
    assert load_questions(dd, lang="zh", split="train")[0].gold == "C"
    dd.save_to_disk(str(tmp_path / "saved"))
    assert load_questions(tmp_path / "saved", lang="zh", split="test")[0].gold == "A"


def test_release_samples_align_with_questions(tmp_path):
    path = write_json(tmp_path / "xcsqa" / "train" / "de.json", [XCSQA_DE])
    gens = load_release_samples(path)
    assert [(g.question_id, g.sample, g.lang) for g in gens] == [("xcsqa-train-0", k, "de") for k in range(3)]
    assert gens[0].letter is None and gens[0].text.endswith("D. Schulen")


def q(i, lang, gold="A", n=3):
    return Question(id=f"d-{i}", lang=lang, stem=f"s{i}", options={chr(65 + k): str(k) for k in range(n)}, gold=gold)


def test_align_reports_mismatches_and_drop_removes_them():
    sets = {"en": [q(0, "en"), q(1, "en"), q(2, "en"), q(3, "en")],
            "fr": [q(0, "fr"), q(1, "fr", gold="B"), q(2, "fr", n=4), q(3, "fr")],
            "zh": [q(0, "zh"), q(1, "zh"), q(2, "zh"), q(3, "zh"), q(4, "zh")]}
    al = align_parallel(sets)
    assert isinstance(al, AlignedSet) and len(al) == 4 and al.ids == ["d-0", "d-1", "d-2", "d-3"]
    kinds = {(m.kind, m.index) for m in al.mismatches}
    assert kinds == {("gold", 1), ("option_count", 2), ("missing", -1)}
    gold = next(m for m in al.mismatches if m.kind == "gold")
    assert gold.values == {"en": "A", "fr": "B", "zh": "A"} and "en=A, fr=B" in gold.description
    missing = next(m for m in al.mismatches if m.kind == "missing")
    assert missing.values == {"zh": 4} and "zh item 4" in missing.description
    kept = al.drop(["gold"])
    assert kept.ids == ["d-0", "d-2", "d-3"] and [m.index for m in kept.mismatches if m.kind == "option_count"] == [1]
    assert al.drop().ids == ["d-0", "d-3"]
    assert all(len(v) == 2 for v in al.drop().by_lang.values())


def test_align_by_id_reports_missing():
    al = align_parallel({"en": [q(0, "en"), q(1, "en")], "de": [q(1, "de"), q(0, "de"), q(7, "de")]}, by="id")
    assert al.ids == ["d-0", "d-1"] and [x.id for x in al.by_lang["de"]] == ["d-0", "d-1"]
    assert [(m.kind, m.question_id) for m in al.mismatches] == [("missing", "d-7")]


def test_split_train_dev():
    train, dev = split_train_dev(100, 0.2, seed=3)
    assert len(dev) == 20 and not set(train) & set(dev) and sorted(train + dev) == list(range(100))
    assert split_train_dev(100, 0.2, seed=3) == (train, dev)
    assert split_train_dev(100, 0.2, seed=4)[1] != dev
    with pytest.raises(ValueError, match="dev_fraction"):
        split_train_dev(10, 1.0)


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data is absent")
def test_real_release_files_load_and_align():
    for lang in ("en", "zh", "fr", "de", "it", "ja"):
        qs = load_questions(SHARED / "xcsqa" / "train" / f"{lang}.json")
        assert len(qs) == 899 and all(len(x.options) == 5 and x.gold in x.options for x in qs)
    for ds in ("usmle", "mcmle"):
        sets = {lang: load_questions(SHARED / "medqa" / ds / f"{lang}.json") for lang in ("en", "zh", "fr")}
        for qs in sets.values():
            assert len(qs) == 700 and all(len(x.options) == 4 and x.gold in x.options for x in qs)
        al = align_parallel(sets)
        assert len(al) == 700 and not [m for m in al.mismatches if m.kind != "gold"]
