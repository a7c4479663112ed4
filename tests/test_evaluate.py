"""Evaluation reports against a hand-worked case; paired bootstrap; tables, plot and JSON files."""

from __future__ import annotations

import json
import random

import pytest

from calm_rag.evaluate import (EvalError, EvalReport, bootstrap_delta, bootstrap_deltas, evaluate_generations,
                               gold_from_questions, load_report, markdown_delta, markdown_table, plot_reports,
                               save_report, table_metrics)
from calm_rag.records import Generation, Question

# Two parallel questions x 3 languages x 3 samples (None = unparseable).
#   demo-1, gold A: en A A B | zh B B A | fr A - C   per-language majority: en A, zh B, fr A (A/C tie -> first)
#   demo-2, gold C: en C C C | zh D C C | fr - - -   per-language majority: en C, zh C, fr none
LETTERS = {
    "demo-1": {"en": ["A", "A", "B"], "zh": ["B", "B", "A"], "fr": ["A", None, "C"]},
    "demo-2": {"en": ["C", "C", "C"], "zh": ["D", "C", "C"], "fr": [None, None, None]},
}
GOLD = {"demo-1": "A", "demo-2": "C"}


def gens_from(letters):
    return [Generation(question_id=qid, lang=lang, sample=k, text=f"Answer: {x}", letter=x)
            for qid, by_lang in letters.items() for lang, xs in by_lang.items() for k, x in enumerate(xs)]


def test_hand_worked_report():
    r = evaluate_generations(gens_from(LETTERS), GOLD, meta={"model": "tiny", "seed": 3})
    assert r.langs == ["en", "zh", "fr"]
    assert r.accuracy == pytest.approx({"en": 5 / 6, "zh": 3 / 6, "fr": 1 / 6})
    assert r.majority_accuracy == pytest.approx({"en": 1.0, "zh": 0.5, "fr": 0.5})
    # pooled: demo-1 A4 B3 C1 -> A; demo-2 C5 D1 -> C
    assert r.vote_accuracy == 1.0
    # demo-1: A,B,A -> 1 of 3 pairs; demo-2: C,C,none -> 1 of 3 pairs
    assert r.consistency == pytest.approx(1 / 3)
    assert r.parse_rate == pytest.approx({"en": 1.0, "zh": 1.0, "fr": 2 / 6})
    assert (r.n_questions, r.n_samples, r.n_languages) == (2, 18, 3)
    assert r.samples_per_lang == {"en": 6, "zh": 6, "fr": 6}
    assert (r.n_missing, r.n_ungraded_questions, r.n_vote_ties, r.n_vote_no_winner) == (0, 0, 0, 0)
    assert r.settings == {"unparseable": "disagree", "tie_break": "first", "weighting": "count"}
    assert r.meta == {"model": "tiny", "seed": 3}


def test_unparseable_policy_and_language_subset():
    drop = evaluate_generations(gens_from(LETTERS), GOLD, unparseable="drop")
    assert drop.consistency == pytest.approx((1 / 3 + 1) / 2)  # demo-2: fr dropped, C == C
    assert drop.settings["unparseable"] == "drop"
    sub = evaluate_generations(gens_from(LETTERS), GOLD, langs=["zh", "fr"])
    assert sub.langs == ["zh", "fr"] and sub.n_samples == 12
    # demo-1 pooled zh+fr: B2 A2 C1, tie -> B seen first (wrong); demo-2: C2 D1 -> C
    assert sub.vote_accuracy == 0.5 and sub.n_vote_ties == 1
    assert sub.consistency == 0.0  # B vs A; C vs none
    none = evaluate_generations(gens_from(LETTERS), GOLD, langs=["zh", "fr"], tie_break="none")
    assert none.vote_accuracy == 0.5 and none.n_vote_no_winner == 1
    # demo-1 fr (A/C tie) has no majority now
    assert none.majority_accuracy["fr"] == 0.0


def test_ungraded_missing_and_bad_input():
    gens = gens_from(LETTERS) + gens_from({"open-1": {"en": ["A"]}})
    gens = [g for g in gens if not (g.question_id == "demo-2" and g.lang == "fr")]
    r = evaluate_generations(gens, {**GOLD, "open-1": None})
    assert r.n_ungraded_questions == 1 and r.n_questions == 2 and r.n_missing == 1
    assert r.consistency == pytest.approx(1 / 3)  # the missing fr answer disagrees, like an unparseable one
    assert r.accuracy["fr"] == pytest.approx(1 / 3) and r.samples_per_lang["fr"] == 3
    with pytest.raises(EvalError, match="duplicate generation"):
        evaluate_generations(gens + gens[:1], GOLD)
    with pytest.raises(EvalError, match="must match the gold"):
        evaluate_generations(gens, {"xcsqa-train-0": "A"})
    with pytest.raises(EvalError, match=r"\['ja'\]"):
        evaluate_generations(gens, GOLD, langs=["en", "ja"])
    with pytest.raises(EvalError, match="unparseable"):
        evaluate_generations(gens, GOLD, unparseable="skip")
    with pytest.raises(EvalError, match="meta"):
        evaluate_generations(gens, GOLD, meta={"model": object()})


def test_gold_from_parallel_questions():
    qs = [Question("demo-1", lang, "stem", {"A": "a", "B": "b"}, "A") for lang in ("en", "zh")]
    assert gold_from_questions(qs + [Question("demo-2", "en", "s", {}, None)]) == {"demo-1": "A", "demo-2": None}
    with pytest.raises(EvalError, match="demo-1.*drop"):
        gold_from_questions(qs + [Question("demo-1", "fr", "stem", {"A": "a", "B": "b"}, "B")])


def random_letters(n_questions, p_right, seed, langs=("en", "zh", "fr"), n_samples=3):
    rng = random.Random(seed)
    out = {}
    for i in range(n_questions):
        out[f"q-{i}"] = {lang: [GOLD_R[i] if rng.random() < p_right else rng.choice("ABCDE".replace(GOLD_R[i], ""))
                                for _ in range(n_samples)] for lang in langs}
    return out


GOLD_R = [random.Random(7).choice("ABCDE") for _ in range(40)]
GOLD_RANDOM = {f"q-{i}": letter for i, letter in enumerate(GOLD_R)}


def test_bootstrap_matches_reports_and_brackets_delta():
    before, after = gens_from(random_letters(40, 0.4, 1)), gens_from(random_letters(40, 0.7, 2))
    rb, ra = evaluate_generations(before, GOLD_RANDOM), evaluate_generations(after, GOLD_RANDOM)
    metrics = table_metrics(rb.langs) + ["majority_accuracy:zh", "parse_rate:fr"]
    out = bootstrap_deltas(before, after, GOLD_RANDOM, metrics, n_boot=500, seed=0)
    for m in metrics:
        delta, lo, hi = out[m]
        assert delta == pytest.approx(ra.metric(m) - rb.metric(m)), m
        if m != "parse_rate:fr":
            assert lo < delta < hi, m
    # every sample parsed in both runs: the change is exactly zero in every resample
    assert out["parse_rate:fr"] == (0.0, 0.0, 0.0)
    assert out["accuracy:en"][0] > 0.1 and out["accuracy:en"][1] > 0  # a clear improvement
    again = bootstrap_delta(before, after, GOLD_RANDOM, "consistency", n_boot=500, seed=0)
    assert again == out["consistency"]  # same seed, same resamples
    assert bootstrap_delta(before, after, GOLD_RANDOM, "consistency", n_boot=500, seed=1) != again


def test_language_group_metrics_pool_samples():
    r = evaluate_generations(gens_from(LETTERS), GOLD)
    assert r.metric("accuracy:en+zh") == pytest.approx((5 + 3) / 12)  # pooled, = mean at equal counts
    assert r.metric("parse_rate:zh+fr") == pytest.approx((6 + 2) / 12)
    assert r.metric("accuracy:en+ja") is None  # ja was not evaluated
    with pytest.raises(EvalError, match="group"):
        r.metric("majority_accuracy:en+zh")  # a majority over a group would be a vote, not a mean
    before, after = gens_from(random_letters(40, 0.4, 1)), gens_from(random_letters(40, 0.7, 2))
    rb, ra = evaluate_generations(before, GOLD_RANDOM), evaluate_generations(after, GOLD_RANDOM)
    delta, lo, hi = bootstrap_delta(before, after, GOLD_RANDOM, "accuracy:zh+fr", n_boot=300)
    assert delta == pytest.approx(ra.metric("accuracy:zh+fr") - rb.metric("accuracy:zh+fr"))
    assert delta == pytest.approx((ra.metric("accuracy:zh") + ra.metric("accuracy:fr")
                                   - rb.metric("accuracy:zh") - rb.metric("accuracy:fr")) / 2)
    assert 0 < lo < delta < hi
    with pytest.raises(EvalError, match="language ja"):
        bootstrap_delta(before, after, GOLD_RANDOM, "accuracy:en+ja")


def test_bootstrap_is_paired_by_question():
    before = gens_from(random_letters(40, 0.5, 3))
    # identical runs: an unpaired bootstrap would give a nonzero spread; a paired one cannot
    for m in ("accuracy:en", "vote_accuracy", "consistency"):
        assert bootstrap_delta(before, before, GOLD_RANDOM, m, n_boot=200) == (0.0, 0.0, 0.0)
    # every question's en samples go from all wrong to all right: the same effect in every question
    wrong = {qid: {"en": [{"A": "B"}.get(GOLD_RANDOM[qid], "A")] * 3} for qid in GOLD_RANDOM}
    right = {qid: {"en": [GOLD_RANDOM[qid]] * 3} for qid in GOLD_RANDOM}
    for m in ("accuracy:en", "vote_accuracy", "majority_accuracy:en"):
        assert bootstrap_delta(gens_from(wrong), gens_from(right), GOLD_RANDOM, m, n_boot=200) == (1.0, 1.0, 1.0)


def test_bootstrap_rejects_mismatched_runs():
    before = gens_from(random_letters(40, 0.5, 3))
    with pytest.raises(EvalError, match="different questions"):
        bootstrap_delta(before, [g for g in before if g.question_id != "q-0"], GOLD_RANDOM, "vote_accuracy")
    with pytest.raises(EvalError, match="langs"):
        bootstrap_delta(before, [g for g in before if g.lang != "fr"], GOLD_RANDOM, "vote_accuracy")
    with pytest.raises(EvalError, match="unknown metric"):
        bootstrap_delta(before, before, GOLD_RANDOM, "accuracy")
    with pytest.raises(EvalError, match="ja"):
        bootstrap_delta(before, before, GOLD_RANDOM, "accuracy:ja")


def test_markdown_tables_hold_the_numbers():
    base = evaluate_generations(gens_from(LETTERS), GOLD)
    better = dict(LETTERS, **{"demo-2": {"en": ["C"] * 3, "zh": ["C"] * 3, "fr": ["C", "C", None]}})
    tuned = evaluate_generations(gens_from(better), GOLD)
    table = markdown_table({"base": base, "calm": tuned})
    lines = table.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith("| run | acc en | acc zh | acc fr | vote acc | consistency")
    assert lines[2] == "| base | 83.3 | 50.0 | 16.7 | 100.0 | 33.3 |"
    # calm: zh (1+3)/6, fr (1+2)/6, consistency (1/3 + 3/3) / 2
    assert lines[3] == "| calm | 83.3 | 66.7 | 50.0 | 100.0 | 66.7 |"
    assert "| base | 100.0 | 50.0 | 50.0 |" in markdown_table({"base": base}, accuracy="majority_accuracy")
    delta = markdown_delta(base, tuned, {"consistency": (1 / 3, 0.0, 2 / 3)})
    assert "| consistency | 33.3 | 66.7 | +33.3 | [+0.0, +66.7] |" in delta
    assert "| acc fr | 16.7 | 50.0 | +33.3 | – |" in delta  # no bootstrap: plain difference, no interval


def test_plot_writes_a_png(tmp_path):
    base = evaluate_generations(gens_from(LETTERS), GOLD)
    tuned = evaluate_generations(gens_from(random_letters(2, 0.9, 4)), {"q-0": GOLD_R[0], "q-1": GOLD_R[1]})
    out = plot_reports({"base": base, "calm": tuned}, tmp_path / "plots" / "eval.png")
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["eval.png"]  # no temp file left behind


def test_report_json_round_trip(tmp_path):
    r = evaluate_generations(gens_from(LETTERS), GOLD, langs=["en", "fr"],
                             meta={"model": "selfrag-7b", "adapter": tmp_path / "lora", "retrieval": "adaptive",
                                   "index": "medical-e5", "seed": 0})
    path = tmp_path / "report.json"
    save_report(r, path)
    loaded = load_report(path)
    assert loaded == r and loaded.meta["adapter"] == str(tmp_path / "lora")
    single = evaluate_generations(gens_from(LETTERS), GOLD, langs=["en"])
    assert single.consistency is None  # undefined for one language; stored as null, not NaN
    save_report(single, path)
    assert json.loads(path.read_text())["consistency"] is None and load_report(path) == single
    path.write_text(json.dumps({**r.to_dict(), "extra": 1}))
    with pytest.raises(EvalError, match="extra"):
        load_report(path)
    path.write_text("{not json")
    with pytest.raises(EvalError, match="report.json:1"):
        load_report(path)
    assert isinstance(EvalReport.from_dict(r.to_dict()), EvalReport)


@pytest.mark.slow
def test_release_samples_report(shared_dir):
    """The CALM release's Llama-2 samples (en, zh, fr): a full report and a bootstrap on 899 questions."""
    import dataclasses

    from calm_rag.qa import load_questions, load_release_samples
    from calm_rag.selfrag import extract_choice

    root = shared_dir / "data" / "xcsqa" / "train"
    langs = ["en", "zh", "fr"]
    qs = [q for lang in langs for q in load_questions(root / f"{lang}.json")]
    gold, options = gold_from_questions(qs), {(q.id, q.lang): q.options for q in qs}
    gens = [dataclasses.replace(g, letter=extract_choice(g.text, lang, options[(g.question_id, lang)]))
            for lang in langs for g in load_release_samples(root / f"{lang}.json", dataset="xcsqa-train")]
    r = evaluate_generations(gens, gold)
    assert (r.n_questions, r.n_languages, r.n_samples) == (899, 3, 899 * 3 * 3)
    assert all(0.9 < r.parse_rate[lang] <= 1.0 for lang in langs)
    # pooling 9 samples beats the weakest language's own samples
    assert min(r.accuracy.values()) < r.vote_accuracy
    assert 0.0 < r.consistency < 1.0
    half = [g for g in gens if g.lang != "fr" or g.sample > 0]  # drop one fr sample per question
    delta, lo, hi = bootstrap_delta(gens, half, gold, "accuracy:fr", n_boot=200)
    assert delta == pytest.approx(evaluate_generations(half, gold).accuracy["fr"] - r.accuracy["fr"])
    assert lo <= delta <= hi
