"""The results report of finished CALM runs: one markdown section, one metrics JSON and one PNG per run.

For each run folder (what `calm-rag calm run CONFIG --run DIR` leaves) it reads the manifest
(config, seeds, pairs per language, stage timings) and the evaluation's generations, and
reports accuracy per language, vote accuracy and consistency for every evaluated model and
retrieval mode, plus paired-bootstrap changes over the eval questions (95 % interval):
CALM - base per retrieval mode, and retrieval - zero-shot for the CALM model. The ablation
table and plot compare runs trained on different languages. `scripts/results_report.py` is its
command line.
"""


from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from calm_rag.adapters import SIDECAR, sidecar_steps
from calm_rag.evaluate import (EvalReport, bootstrap_deltas, load_report, markdown_delta, markdown_table, plot_reports,
                               table_metrics)
from calm_rag.config_files import load_run_config
from calm_rag.pipeline import Run
from calm_rag.records import Generation, Vote, atomic_file, atomic_write_text, read_jsonl
from calm_rag.vote import sample_accuracy

# (before, after, what the change measures)
COMPARISONS = [("base-always", "calm-always", "CALM - base, retrieval always"),
               ("base-never", "calm-never", "CALM - base, zero-shot (no retrieval)"),
               ("base-adaptive", "calm-adaptive", "CALM - base, adaptive retrieval"),
               ("calm-never", "calm-always", "CALM model: retrieval - zero-shot"),
               ("base-never", "base-always", "base model: retrieval - zero-shot")]


def group_metrics(trained: Sequence[str], evaluated: Sequence[str]) -> dict[str, str]:
    """Pooled accuracy over the evaluated training languages and over the languages only evaluated in
    (transfer), by ablation column; a column without languages is left out."""
    groups = {"acc trained": [x for x in evaluated if x in trained],
              "acc held out": [x for x in evaluated if x not in trained]}
    return {column: "accuracy:" + "+".join(langs) for column, langs in groups.items() if langs}


ABLATION_COLUMNS = ("acc trained", "acc held out", "vote acc", "consistency")


def _ablation_metrics(data: dict, evaluated: Sequence[str]) -> dict[str, str]:
    """ABLATION_COLUMNS -> the metric behind each, for a metrics JSON's trained languages."""
    return {**group_metrics(data["config"]["calm"]["languages"], evaluated),
            "vote acc": "vote_accuracy", "consistency": "consistency"}


def ablation_deltas(path: Path, comparison: str, base: tuple[Path, str] | None = None, n_boot: int = 1000,
                    seed: int = 0) -> tuple[dict, dict[str, tuple[float, float | None, float | None]]]:
    """A metrics JSON and its CALM - base changes per ABLATION_COLUMNS: (delta, lo, hi), or (delta, None,
    None) for a pooled accuracy without a stored bootstrap (a file written before they were added).

    With `base` (METRICS.json, model): the arm's model (the first of `comparison`) against that model of
    another file, bootstrapped here from both files' graded letters; for arms graded in other sessions
    than the base they share (`calm eval --models calm`)."""
    if base is not None:
        (_, data), gens, reports = _paired_letters(base, (path, comparison.split(" vs ")[0]))
        metrics = _ablation_metrics(data, reports[1].langs)
        deltas = bootstrap_deltas(gens[0], gens[1], data["gold"], list(metrics.values()), n_boot=n_boot, seed=seed,
                                  langs=list(reports[1].langs))
        return data, {column: deltas[metric] for column, metric in metrics.items()}
    data = json.loads(path.read_text())
    if comparison not in data["deltas"]:
        raise SystemExit(f"{path}: no '{comparison}' comparison; it has {sorted(data['deltas'])}")
    before, after = (EvalReport.from_dict(data["reports"][n], str(path)) for n in comparison.split(" vs ")[::-1])
    stored = data["deltas"][comparison]["metrics"]
    metrics = _ablation_metrics(data, after.langs)
    out = {}
    for column, metric in metrics.items():
        if metric in stored:
            out[column] = tuple(stored[metric])
        else:
            out[column] = (after.metric(metric) - before.metric(metric), None, None)
    return data, out


def ablation_arms(files: Sequence[Path], comparison: str = "calm-always vs base-always",
                  base: tuple[Path, str] | None = None) -> list[tuple[dict, dict]]:
    """`ablation_deltas` of each metrics JSON, bootstrapped once for both the table and the plot."""
    return [ablation_deltas(file, comparison, base) for file in files]


def ablation_plot(arms: Sequence[tuple[dict, dict]], path: Path, comparison: str = "calm-always vs base-always") -> None:
    """Changes with their 95 % intervals (`ablation_arms`), one group of points per metric, one colour per run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, (data, deltas) in enumerate(arms):
        for j, column in enumerate(ABLATION_COLUMNS):
            if column in deltas:
                d, lo, hi = deltas[column]
                err = [[100 * (d - lo)], [100 * (hi - d)]] if lo is not None else None
                ax.errorbar(j + 0.15 * (i - (len(arms) - 1) / 2), 100 * d, yerr=err, fmt="o", capsize=4,
                            color=f"C{i}", label=f"{data['run']} ({len(data['config']['calm']['languages'])} "
                                                 f"languages)" if j == 0 else None)
    ax.axhline(0, color="0.5", linewidth=0.8)
    ax.set_xticks(range(len(ABLATION_COLUMNS)), ABLATION_COLUMNS)
    ax.set_ylabel("CALM - base (pp), 95 % interval")
    ax.set_title(f"Language ablation: {comparison}")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120)


def ablation_table(arms: Sequence[tuple[dict, dict]]) -> str:
    """One row per arm (`ablation_arms`): CALM - base on trained and held-out languages, vote, consistency.

    Pooled accuracies without a stored bootstrap (a metrics file written before they were added)
    show the plain difference of the reports and no interval.
    """
    rows = ["| run | trained in | votes right | pairs | "
            + " | ".join(f"Δ {c}" for c in ABLATION_COLUMNS) + " |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for data, deltas in arms:
        cells = []
        for column in ABLATION_COLUMNS:
            d, lo, hi = deltas.get(column, (None, None, None))
            cells.append("–" if d is None else f"{100 * d:+.1f} (no CI)" if lo is None
                         else f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]")
        trained = data["config"]["calm"]["languages"]
        pairs = data["stages"].get("pairs", {}).get("pairs", "–")
        signal = data.get("training_signal")
        right = f"{signal['votes_right']}/{signal['votes']}" if signal else "–"
        rows.append(f"| {data['run']} | {', '.join(trained)} | {right} | {pairs} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def training_signal(folder: Path, train_qs, stages: dict) -> dict:
    """How often the cross-lingual vote and the training samples were right: CALM learns from the vote.

    Counted from the folder's votes and samples; a folder restored from its manifest and shipped
    adapter (the samples did not outlive their session) gives the signal `calm pairs` recorded.
    """
    gold = {q.id: q.gold for q in train_qs}
    if not (folder / "votes.jsonl").is_file() or not (folder / "generations.jsonl").is_file():
        recorded = stages.get("pairs", {}).get("signal")
        if recorded is None:
            raise SystemExit(f"{folder}: no votes.jsonl/generations.jsonl and no training signal recorded in "
                             f"manifest.json; run the vote and pairs stages (calm-rag calm run CONFIG --run {folder})")
        return {"votes": recorded["with_gold"], "votes_right": recorded["vote_right"],
                "vote_ties": stages.get("vote", {}).get("n_ties"), "samples": stages.get("sample", {}).get("generations"),
                "samples_right": None, "sample_accuracy": recorded["sample_accuracy"], "source": "manifest"}
    votes = list(read_jsonl(folder / "votes.jsonl", Vote))
    samples = list(read_jsonl(folder / "generations.jsonl", Generation))
    return {"votes": len(votes), "votes_right": sum(v.winner == gold[v.question_id] for v in votes),
            "vote_ties": sum(v.tie for v in votes), "samples": len(samples),
            "samples_right": sum(g.letter == gold[g.question_id] for g in samples),
            "sample_accuracy": sample_accuracy(samples, gold), "source": "run folder"}


def signal_text(signal: dict) -> str:
    """One sentence of the report: the vote's and the samples' accuracy on the training questions."""
    per_lang = ", ".join(f"{lang} {100 * acc:.1f} %" for lang, acc in signal["sample_accuracy"].items())
    samples = (f"{signal['samples_right']} of {signal['samples']} training samples were right ({per_lang})"
               if signal["samples_right"] is not None else
               f"training samples right per language: {per_lang} (of {signal['samples']} samples; recorded in "
               f"the manifest by `calm pairs`, the samples themselves are not in this folder)")
    return (f"Training signal: the cross-lingual vote matched the gold answer for {signal['votes_right']} of "
            f"{signal['votes']} training questions ({signal['vote_ties']} of the votes were ties); {samples}.")


def dpo_steps(folder: Path, stages: dict, max_steps: int | None) -> str:
    """The DPO steps behind the evaluated adapter: the train stage's record, else the adapter's sidecar
    (a checkpoint shipped before its schedule ended and restored into the folder)."""
    if "train" in stages:
        return f"{stages['train'].get('steps', '–')} DPO steps"
    steps = sidecar_steps(folder / "train" / "adapter")
    if steps is None:
        return "– DPO steps"
    return f"{steps} DPO steps (the checkpoint of a {max_steps}-step schedule, named by the adapter's {SIDECAR})"


def answer_changes(before: Sequence[Generation], after: Sequence[Generation], gold: dict) -> dict:
    """How far the second model's answers moved from the first's, unit by unit: letters changed, the
    right answers lost and won, and the mean answer length (a DPO adapter that barely moved the model
    changes few letters; one that collapsed to bare letters shortens its answers)."""
    old = {(g.question_id, g.lang, g.sample): g for g in before}
    both = [(old[k], g) for g in after if (k := (g.question_id, g.lang, g.sample)) in old]
    return {"units": len(both), "changed": sum(b.letter != a.letter for b, a in both),
            "right_to_wrong": sum(b.letter == gold.get(b.question_id) != a.letter for b, a in both),
            "wrong_to_right": sum(b.letter != gold.get(b.question_id) == a.letter for b, a in both),
            "chars_before": sum(len(b.text) for b, _ in both) / len(both) if both else None,
            "chars_after": sum(len(a.text) for _, a in both) / len(both) if both else None}


def changes_text(c: dict) -> str:
    """One sentence under a comparison's table: what `answer_changes` counted (the lengths where it has them)."""
    if not c["units"]:
        return "No unit was answered by both models."
    text = (f"Answers that changed letter: {c['changed']} of {c['units']} units ({c['wrong_to_right']} wrong -> right, "
            f"{c['right_to_wrong']} right -> wrong)")
    if "chars_before" not in c:
        return text + "."
    return text + f"; mean answer length {c['chars_before']:.0f} -> {c['chars_after']:.0f} characters."


def run_section(folder: Path, out: Path, n_boot: int, seed: int) -> str:
    manifest = json.loads((folder / "manifest.json").read_text())
    if "eval" not in manifest.get("stages", {}):
        raise SystemExit(f"{folder}: no eval stage in manifest.json; finish the run first "
                         f"(calm-rag calm run CONFIG --run {folder})")
    config = manifest["config"]
    run = Run(folder, load_run_config(None, **{k: v for k, v in config.items() if k != "index_recipe"}))
    train_qs, eval_qs = run.questions()
    gold = {q.id: q.gold for q in eval_qs}
    langs = list(run.cfg.eval_languages)
    names = manifest["stages"]["eval"]["runs"]
    reports, gens = graded_rows(folder / "eval", names)
    metrics = table_metrics(langs) + list(group_metrics(run.cfg.calm.languages, langs).values())
    for before, after, _ in COMPARISONS:
        if before in reports and after in reports:
            check_same_passages(folder, (before, reports[before]), (after, reports[after]))
    deltas = [(before, after, label, bootstrap_deltas(gens[before], gens[after], gold, metrics, n_boot=n_boot,
                                                      seed=seed, langs=langs))
              for before, after, label in COMPARISONS if before in gens and after in gens]
    changes = {f"{after} vs {before}": answer_changes(gens[before], gens[after], gold) for before, after, _, _ in deltas}
    stages = manifest["stages"]
    signal = training_signal(folder, train_qs, stages)
    name = folder.name
    plot_reports(reports, out / f"{name}.png", title=f"{name}: accuracy per language, vote accuracy, consistency")
    md = [f"### {name}", "",
          f"Generator `{config['model']['generator']}`, trained in {', '.join(config['calm']['languages'])}, "
          f"evaluated in {', '.join(langs)}; "
          f"{len({q.id for q in train_qs})} training and {len(gold)} eval questions; "
          f"n={config['generate']['n']} samples at temperature {config['generate']['temperature']}, "
          f"{config['generate']['max_new_tokens']} new tokens, {retrieval_text(config['selfrag'])}; "
          f"{dpo_steps(folder, stages, config['train'].get('max_steps'))}. Seeds: sampling {config['generate']['seed']}, "
          f"training {config['train']['seed']}, split {config['data']['split_seed']}"
          f"{' (split file ' + Path(config['data']['split']).name + ')' if config['data'].get('split') else ''}, "
          f"bootstrap {seed} ({n_boot} resamples over eval questions).", "",
          "Pairs per language: " + ", ".join(f"{k} {v}" for k, v in stages.get("pairs", {}).get("per_lang", {}).items())
          + f" (total {stages.get('pairs', {}).get('pairs', '–')}). Stage wall times (s): "
          + ", ".join(f"{k} {v['seconds']}" for k, v in stages.items()) + ".", "",
          signal_text(signal), "",
          markdown_table(reports), f"![{name}]({name}.png)", ""]
    for before, after, label, d in deltas:
        md += [f"{label}{passages_text(reports[after].meta)} ({after} vs {before}):", "", markdown_delta(reports[before], reports[after], d),
               changes_text(changes[f"{after} vs {before}"]), ""]
    text = "\n".join(md)
    atomic_write_text(out / f"{name}.md", text)
    atomic_write_text(out / f"{name}.json", json.dumps({
        "run": name, "config": config, "stages": stages, "versions": manifest.get("versions"),
        "reports": {n: r.to_dict() for n, r in reports.items()},
        "deltas": {f"{after} vs {before}": {"label": label, "metrics": {m: list(v) for m, v in d.items()}}
                   for before, after, label, d in deltas},
        "changes": changes, "bootstrap": {"n_boot": n_boot, "seed": seed}, "training_signal": signal,
        # the graded letters, enough to recompute any metric or interval without the run folder
        "gold": gold,
        "answers": graded_letters(gens),
    }, indent=2, ensure_ascii=False) + "\n")
    return text


def graded_rows(folder: Path, names: Sequence[str]) -> tuple[dict[str, EvalReport], dict[str, list[Generation]]]:
    """The named evaluated rows of an evaluation folder: each row's report (<row>.json) and generations."""
    return ({n: load_report(folder / f"{n}.json") for n in names},
            {n: list(read_jsonl(folder / f"{n}.generations.jsonl", Generation)) for n in names})


def graded_letters(gens: dict[str, list[Generation]]) -> dict[str, list[list]]:
    """Each row's graded letters as a metrics JSON keeps them: [question id, language, sample, letter]."""
    return {n: [[g.question_id, g.lang, g.sample, g.letter] for g in gs] for n, gs in gens.items()}


def retrieval_text(selfrag: dict) -> str:
    """How a run retrieved: a zero-shot run names no index."""
    if selfrag.get("retrieval") == "never" or not selfrag.get("index"):
        return "zero-shot (retrieval never)"
    return f"{passages_read(selfrag)} (retrieval {selfrag['retrieval']})"


def passages_read(settings: dict) -> str:
    """'k=2 passages from `commonsense-lite`', from a run's selfrag config or a row's meta."""
    return f"k={settings['top_k']} passages from `{Path(settings['index']).name}`"


RETRIEVAL_KEYS = ("index", "top_k", "threshold")  # what pipeline.row_retrieval records in a row's meta


def check_same_passages(folder: Path, *rows: tuple[str, EvalReport]) -> None:
    """Two rows that both retrieved are compared only if they read the same index with the same k (a run
    folder's evaluation may add a retrieval row later, with its own --index and -k)."""
    (bname, b), (aname, a) = rows
    if b.meta.get("retrieval", "never") == "never" or a.meta.get("retrieval", "never") == "never":
        return
    differ = [k for k in RETRIEVAL_KEYS if b.meta.get(k) != a.meta.get(k)]
    if differ:
        raise SystemExit(f"{folder}: {aname} and {bname} retrieved with different {', '.join(differ)} "
                         f"({[a.meta.get(k) for k in differ]} vs {[b.meta.get(k) for k in differ]}); evaluate both "
                         f"with the same --index and -k")


def passages_text(meta: dict) -> str:
    """How a row retrieved, where its meta records it: ' (k=2 passages from `commonsense-lite`)'."""
    if meta.get("top_k") is None or not meta.get("index"):
        return ""
    return f" ({passages_read(meta)})"


# the settings two evaluations must share for their graded letters to be compared question by question
SHARED_EVAL_SETTINGS = (("model", "generator"), ("model", "precision"), ("generate", "max_new_tokens"),
                        ("selfrag", "critique"), ("selfrag", "complete_answer"), ("eval", "n"))


def _paired_letters(before: tuple[Path, str], after: tuple[Path, str]) -> tuple[list[dict], list[list], list]:
    """Two models' metrics JSONs (`run_section`'s files), checked to hold the same eval questions, gold and
    SHARED_EVAL_SETTINGS: (the two files' data, their graded letters as Generations, their EvalReports)."""
    loaded = []
    for path, name in (before, after):
        data = json.loads(Path(path).read_text())
        if name not in data.get("answers", {}):
            raise SystemExit(f"{path}: no graded letters for {name!r} (it has {sorted(data.get('answers', {}))}); "
                             f"name one of those after the colon, e.g. {path}:base-never")
        loaded.append(data)
    (b, a), (bname, aname) = loaded, (before[1], after[1])
    if b["gold"] != a["gold"]:
        raise SystemExit(f"{before[0]} and {after[0]} graded different questions or gold letters; compare evaluations "
                         f"of the same eval split (data.split, data.max_eval)")
    differ = [".".join(key) for key in SHARED_EVAL_SETTINGS
              if b["config"].get(key[0], {}).get(key[1]) != a["config"].get(key[0], {}).get(key[1])]
    if differ:
        raise SystemExit(f"{before[0]} and {after[0]} were evaluated with different {', '.join(differ)}; their letters "
                         f"cannot be compared question by question")
    gens = [[Generation(q, lang, sample, "", letter) for q, lang, sample, letter in d["answers"][n]]
            for d, n in ((b, bname), (a, aname))]
    reports = [EvalReport.from_dict(d["reports"][n], where=f"{p}:{n}") for d, n, p in ((b, bname, before[0]),
                                                                                    (a, aname, after[0]))]
    check_same_passages(Path(after[0]), (bname, reports[0]), (aname, reports[1]))
    return loaded, gens, reports


def compare_metrics_files(before: tuple[Path, str], after: tuple[Path, str], n_boot: int, seed: int) -> tuple[str, dict]:
    """One model of one metrics JSON against one of another (`run_section`'s files), from their graded
    letters alone: a run folder lasts one session here, so a model evaluated in a later session is
    compared with a base graded in an earlier one. Both must hold the same eval questions and gold and
    the settings in SHARED_EVAL_SETTINGS; answer lengths are not in the files, so they are not compared."""
    (b, _), gens, reports = _paired_letters(before, after)
    bname, aname = before[1], after[1]
    langs = list(reports[0].langs)
    metrics = table_metrics(langs) + ["accuracy:" + "+".join(langs)]  # the last: mean accuracy, pooled over languages
    deltas = bootstrap_deltas(gens[0], gens[1], b["gold"], metrics, n_boot=n_boot, seed=seed, langs=langs)
    changes = {k: v for k, v in answer_changes(gens[0], gens[1], b["gold"]).items() if not k.startswith("chars")}
    labels = [f"{Path(before[0]).stem}:{bname}", f"{Path(after[0]).stem}:{aname}"]  # one run may be in both files
    text = "\n".join([markdown_table(dict(zip(labels, reports))), f"{labels[1]} vs {labels[0]}:", "",
                      markdown_delta(reports[0], reports[1], deltas), changes_text(changes)])
    return text, {"before": labels[0], "after": labels[1], "metrics": {m: list(v) for m, v in deltas.items()},
                  "changes": changes, "bootstrap": {"n_boot": n_boot, "seed": seed}}


def files_metrics(folder: Path, out: Path) -> dict:
    """A `calm eval --data ... --out FOLDER` evaluation as a metrics JSON like `run_section`'s (reports, gold,
    graded letters, and the settings `compare_metrics_files` checks), so a model graded on the data files
    without a run folder (a packaged adapter, say) is compared with a run's base from the letters alone.
    No training section: such a folder trained nothing."""
    paths = [folder / "settings.json", folder / "gold.json"]
    for path in paths:
        if not path.is_file():
            raise SystemExit(f"{path}: missing; give the --out folder of `calm-rag calm eval --data ...` (a rerun "
                             f"of that command writes gold.json and answers nothing again)")
    settings, gold = (json.loads(p.read_text(encoding="utf-8")) for p in paths)
    names = sorted(p.name[:-len(".generations.jsonl")] for p in folder.glob("*.generations.jsonl"))
    names = [n for n in names if (folder / f"{n}.json").is_file()]
    if not names:
        raise SystemExit(f"{folder}: no graded row (<row>.json); let `calm-rag calm eval --data ...` finish first")
    reports, gens = graded_rows(folder, names)
    generate = settings["generate"]
    config = {"model": {k: settings.get(k) for k in ("backend", "precision", "adapter")} | {"generator": settings["model"]},
              "generate": generate, "selfrag": {**settings["selfrag"], "index": settings["index"]},
              "eval": {"n": generate["n"]}, "data": {"files": settings["files"], "langs": settings["langs"]}}
    data = {"run": out.stem, "source": str(folder), "config": config,
            "reports": {n: r.to_dict() for n, r in reports.items()}, "gold": gold,
            "answers": graded_letters(gens)}
    atomic_write_text(out, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return data
