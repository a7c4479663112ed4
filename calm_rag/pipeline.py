"""The wiring: a resumable CALM run in one run folder, stage by stage.

run/
  manifest.json        config, versions, seeds, counts and timings per stage
  questions.jsonl      the aligned questions (train and eval split marked by `split.json`)
  generations.jsonl    sampled answers, appended per (question, language) unit; a restart skips done units
  votes.jsonl, pairs.jsonl, pairs_counts.json
  train/adapter/       the DPO LoRA adapter
  eval/{base,calm}[-noretrieval].json, eval/report.md, eval/plot.png
Every stage reads the previous stage's files, so each can be rerun alone (`calm-rag calm vote`, ...).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from calm_rag.config import VOTES, ConfigError, GenerateConfig, RunConfig
from calm_rag.config_files import load_run_config
from calm_rag.records import Generation, Question, Vote, atomic_write_text, package_versions, read_jsonl, write_jsonl
from calm_rag.sampling import sample_units

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- building blocks


def load_aligned(cfg: RunConfig):
    """The parallel questions of the training and eval languages, mismatches reported (and dropped if
    configured): one question set for every language, so eval-only languages grade the same questions."""
    from calm_rag.qa import load_parallel

    missing = [lang for lang in cfg.all_languages if lang not in cfg.data.files]
    if missing:
        raise ConfigError(f"data.files has no file for language(s) {missing}; add them or drop them from "
                          f"calm.languages / eval.languages")
    # with a split file, ids are qa.py's own (`xcsqa-train-12`), the ones the split file lists
    return load_parallel({lang: cfg.data.files[lang] for lang in cfg.all_languages},
                         dataset=None if cfg.data.split else "q", drop=cfg.data.drop_mismatched)


def split_questions(cfg: RunConfig, aligned) -> tuple[list[int], list[int]]:
    from calm_rag.qa import split_train_dev

    if cfg.data.split:
        train, dev = split_from_file(cfg.data.split, aligned)
    else:
        train, dev = split_train_dev(len(aligned), cfg.data.eval_fraction, cfg.data.split_seed)
    if cfg.data.max_train is not None:
        train = train[:cfg.data.max_train]
    if cfg.data.max_eval is not None:
        dev = dev[:cfg.data.max_eval]
    return train, dev


def read_split_file(path: str | Path) -> dict[str, Any]:
    """A split file's train and dev id lists, checked: lists of strings, no id on both sides."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"data.split={path}: no such file; make it with scripts/make_splits.py") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); remake it with scripts/make_splits.py") from exc
    for key in ("train", "dev"):
        ids = doc.get(key) if isinstance(doc, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ConfigError(f"{path}: {key!r} must be a list of question ids (strings), as scripts/make_splits.py "
                              f"writes them")
    both = sorted(set(doc["train"]) & set(doc["dev"]))
    if both:
        raise ConfigError(f"{path}: {len(both)} id(s) are in both train and dev (e.g. {both[:3]}); a question "
                          f"belongs to one side")
    return doc


def split_from_file(path: str | Path, aligned, required: tuple[str, ...] = ("train", "dev")
                    ) -> tuple[list[int], list[int]]:
    """Positions in `aligned` of the split file's train and dev ids, in data order.

    Every language must carry the same id for a question (qa.py ids `<set>-<part>-<index>` agree
    when all files of a set sit in one folder), and every id of the `required` lists must be in
    the data (ids of the other list that are absent are skipped).
    """
    doc = read_split_file(path)
    ref = aligned.langs[0]
    for lang, qs in aligned.by_lang.items():
        for q, qid in zip(qs, aligned.ids):
            if q.id != qid:
                raise ConfigError(f"{path}: data.files[{lang}] gives question ids like {q.id!r} where {ref} gives "
                                  f"{qid!r}; with a split file every language's file must come from the same "
                                  f"folder <set>/<part>/<lang>.json, as the split's source {doc.get('source')}")
    pos = {qid: i for i, qid in enumerate(aligned.ids)}
    missing = [qid for side in required for qid in doc[side] if qid not in pos]
    if missing:
        raise ConfigError(f"{path}: {len(missing)} question id(s) of the split are missing from the data (e.g. "
                          f"{missing[:3]}; the data has ids such as {aligned.ids[:2]}). Point data.files at the "
                          f"files the split was made from ({doc.get('source')}), remake the split with "
                          f"scripts/make_splits.py, or, if they were dropped as mismatched across languages "
                          f"(see the warnings), set data.drop_mismatched: false")
    train, dev = (sorted(pos[i] for i in doc[side] if i in pos) for side in ("train", "dev"))
    unused = len(aligned) - len(train) - len(dev)
    log.info("split %s: %d train, %d dev question(s)%s", path, len(train), len(dev),
             f"; {unused} question(s) of the data are in neither list" if unused else "")
    return train, dev


def ensure_index(cfg: RunConfig) -> Path:
    """The index folder; built from the recipe on first use (the demo index builds in a minute)."""
    from calm_rag.index_recipes import build_from_recipe, demo_index, load_recipe

    if cfg.selfrag.index:
        path = Path(cfg.selfrag.index)
        if not path.is_dir():
            raise ConfigError(f"selfrag.index={path} does not exist; build it with calm-rag index build")
        return path
    if cfg.index_recipe in (None, "demo"):  # the bundled one, from any folder
        return demo_index()
    recipe = load_recipe(cfg.index_recipe)
    out = Path(recipe.output)
    if not (out / "manifest.json").is_file():
        log.info("building index %s from recipe %s", out, cfg.index_recipe)
        build_from_recipe(recipe)
    return out


def load_run_generator(cfg: RunConfig, adapter: str | None = None):
    """The generator a run config names, on its backend (model.backend), precision and threads."""
    from calm_rag.generate import load_generator

    m = cfg.model
    return load_generator(m.generator, backend=m.backend, adapter=adapter, device=m.device, precision=m.precision,
                          threads=m.threads)


def make_selfrag(cfg: RunConfig, retriever, adapter: str | None = None, retrieval: str | None = None,
                 gen_cfg: GenerateConfig | None = None, generator=None, critique_without_passage: bool = True,
                 critique_agreeing: bool = True):
    from calm_rag.rag import SelfRag

    gen = generator or load_run_generator(cfg, adapter or cfg.model.adapter)
    scfg = dataclasses.replace(cfg.selfrag, retrieval=retrieval) if retrieval else cfg.selfrag
    return SelfRag(gen, retriever, scfg, gen_cfg or cfg.generate,
                   critique_without_passage=critique_without_passage and scfg.critique_zero_shot,
                   critique_agreeing=critique_agreeing)


def eval_generate_config(cfg: RunConfig) -> GenerateConfig:
    """Evaluation answers: eval.n samples (1: greedy) with the run's generation settings."""
    return dataclasses.replace(cfg.generate, n=cfg.eval.n, temperature=0.0 if cfg.eval.n == 1 else cfg.generate.temperature)


def evaluate_modes(cfg: RunConfig, units: list[Question], gold: dict[str, str | None], langs: Iterable[str],
                   modes: Iterable[str], out_dir: Path, *, adapter: str | None = None,
                   retriever: Callable[[], Any] | None = None, before: Callable[[str, Path], None] | None = None,
                   meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The one evaluation loop (run folders and `calm eval --data`): per retrieval mode, answer every unit,
    resumably, into out_dir/<row>.generations.jsonl and grade it into out_dir/<row>.json; rows are named
    base/calm plus the mode ("calm-never"). `retriever` is called only for modes that retrieve; `before(row,
    generations path)` runs before a row answers."""
    from calm_rag.evaluate import evaluate_generations, save_report

    gen_cfg = eval_generate_config(cfg)
    reports: dict[str, Any] = {}
    generator = None
    for mode in modes:
        name = ("calm" if adapter else "base") + ("" if mode == "adaptive" else f"-{mode}")
        path = out_dir / f"{name}.generations.jsonl"
        retrieval_settings = row_retrieval(cfg, mode)
        out_dir.mkdir(parents=True, exist_ok=True)
        check_row_retrieval(out_dir, name, retrieval_settings)
        if before is not None:
            before(name, path)
        # one greedy answer per unit: a score can only choose among passages' differing letters, so an answer
        # without a passage, or passages that agree, get no critique (the graded letters are the same)
        rag = make_selfrag(cfg, retriever() if retriever is not None and mode != "never" else None, adapter=adapter,
                           retrieval=mode, gen_cfg=gen_cfg, generator=generator,
                           critique_without_passage=gen_cfg.n > 1, critique_agreeing=gen_cfg.n > 1)
        generator = rag.gen  # one load per model, every mode
        gens = sample_units(rag, units, path, gen_cfg.n)
        report = evaluate_generations(gens, gold, langs=list(langs), meta={
            **(meta or {}), "model": cfg.model.generator, "run": name, "retrieval": mode, "adapter": adapter,
            "critique": rag.mode, "backend": rag.gen.backend, **retrieval_settings})
        save_report(report, out_dir / f"{name}.json")
        reports[name] = report
    return reports


# ---------------------------------------------------------------- stages


class Run:
    """One run folder. Each stage method is resumable and records counts and timing in the manifest."""

    def __init__(self, folder: str | Path, cfg: RunConfig):
        self.dir = Path(folder)
        self.cfg = cfg
        if cfg.calm.reuse and not (Path(cfg.calm.reuse) / "manifest.json").is_file():  # before the folder is made
            raise ConfigError(f"calm.reuse={cfg.calm.reuse}: not a run folder (no manifest.json); run that run "
                              f"first, or drop calm.reuse")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.dir / "manifest.json"
        self.manifest = json.loads(self.manifest_path.read_text()) if self.manifest_path.exists() else {}
        self._check_config()

    def _check_config(self) -> None:
        old = self.manifest.get("config")
        new = json.loads(json.dumps(self.cfg.to_dict()))
        for section in ("model", "generate", "selfrag", "calm", "data"):
            # the vote's weighting acts after sampling: a rerun of the vote stage may change it
            if old and _comparable(old.get(section), section) != _comparable(new.get(section), section):
                raise ConfigError(f"{self.manifest_path}: the run was started with other {section} settings "
                                  f"({old.get(section)} vs {new.get(section)}); use a new run folder or the same config")
        if old and old.get("eval", {}).get("languages") != new["eval"]["languages"]:  # questions.jsonl holds them
            raise ConfigError(f"{self.manifest_path}: the run was started with eval.languages="
                              f"{old.get('eval', {}).get('languages')}, not {new['eval']['languages']}; use a new "
                              f"run folder, or calm-rag calm eval --data for other languages")
        self.manifest["config"] = new
        self.manifest.setdefault("versions", package_versions())
        self.manifest.setdefault("stages", {})
        self._save()

    def _save(self) -> None:
        atomic_write_text(self.manifest_path, json.dumps(self.manifest, indent=2, ensure_ascii=False) + "\n")

    def _record(self, stage: str, started: float, **counts: Any) -> None:
        self.manifest["stages"][stage] = {"seconds": round(time.time() - started, 1), **counts}
        self._save()

    # -- questions

    def questions(self) -> tuple[list[Question], list[Question]]:
        """Train and eval question units (one per question and language), written once."""
        path = self.dir / "questions.jsonl"
        split_path = self.dir / "split.json"
        if not path.exists():
            aligned = load_aligned(self.cfg)
            train, dev = split_questions(self.cfg, aligned)
            qs = [aligned.by_lang[lang][i] for i in train for lang in self.cfg.calm.languages]
            qs += [aligned.by_lang[lang][i] for i in dev for lang in self.cfg.eval_languages]
            write_jsonl(path, qs)
            atomic_write_text(split_path, json.dumps({
                "train": [aligned.ids[i] for i in train], "eval": [aligned.ids[i] for i in dev],
                "mismatches": [m.description for m in aligned.mismatches]}, indent=1, ensure_ascii=False))
        split = json.loads(split_path.read_text())
        qs = list(read_jsonl(path, Question))
        train_ids, eval_ids = set(split["train"]), set(split["eval"])
        return [q for q in qs if q.id in train_ids], [q for q in qs if q.id in eval_ids]

    def retriever(self):
        from calm_rag.retrieve import load_retriever

        if not hasattr(self, "_retriever"):
            self._retriever = load_retriever(ensure_index(self.cfg), self.cfg.model.embedder)
        return self._retriever

    # -- stages

    def sample(self, rag=None) -> list[Generation]:
        started = time.time()
        train, _ = self.questions()
        if self.cfg.calm.reuse:
            self._adopt("generations.jsonl", train, self.cfg.generate.n, "sample")
        rag = rag or make_selfrag(self.cfg, None if self.cfg.selfrag.retrieval == "never" else self.retriever())
        gens = sample_units(rag, train, self.dir / "generations.jsonl", self.cfg.generate.n)
        parsed = sum(g.letter is not None for g in gens)
        self._record("sample", started, units=len(train), generations=len(gens), parsed=parsed,
                     critique=rag.mode, seed=self.cfg.generate.seed, backend=rag.gen.backend)
        return gens

    def vote(self) -> dict[str, Vote]:
        from calm_rag.vote import vote_all, vote_stats

        started = time.time()
        gens = list(read_jsonl(self._need("generations.jsonl", "vote", "sample"), Generation))
        gens = _canonical_order(gens, self.cfg.calm.languages)
        votes = vote_all(gens, langs=self.cfg.calm.languages, weighting=_weighting(self.cfg.calm.vote))
        write_jsonl(self.dir / "votes.jsonl", votes.values())
        stats = vote_stats(votes)
        self._record("vote", started, questions=len(votes), vote=self.cfg.calm.vote, **_as_dict(stats))
        return votes

    def _adopt(self, name: str, units: list[Question], n: int, what: str) -> None:
        """Copy the records of `units` in file `name` from the run folder calm.reuse names, once (the file then
        resumes as usual), after checking that both runs sample and answer those units the same way."""
        out, source = self.dir / name, Path(self.cfg.calm.reuse)
        if out.exists():
            return
        try:
            theirs = json.loads((source / "manifest.json").read_text(encoding="utf-8"))["config"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"calm.reuse={source}: not a run folder ({exc}); run that run first, or drop "
                              f"calm.reuse") from exc
        ours = json.loads(json.dumps(self.cfg.to_dict()))
        for section in ("model", "generate", "selfrag", "data") + (("eval",) if what != "sample" else ()):
            mine, other = _shared_settings(ours, section), _shared_settings(theirs, section)
            if mine != other:
                raise ConfigError(f"calm.reuse={source}: its {section} settings differ from this run's ({other} vs "
                                  f"{mine}); the {what} is shared only between runs that make it the same way")
        want = {(q.id, q.lang): 0 for q in units}
        records = []
        if (source / name).is_file():
            for rec in read_jsonl(source / name):
                key = (rec["question_id"], rec["lang"])
                if key in want:
                    want[key] += 1
                    records.append(rec)
        short = [key for key, count in want.items() if count != n]
        if short:
            raise ConfigError(f"calm.reuse={source}: {source / name} lacks {len(short)} of this run's {len(want)} "
                              f"{what} unit(s) (e.g. {short[0][0]} {short[0][1]}); finish that stage there first "
                              f"(calm-rag calm run CONFIG --run {source})")
        out.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(out, records)
        log.info("%s: %d record(s) of %d unit(s) taken from %s", out, len(records), len(want), source)

    def _need(self, name: str, stage: str, maker: str) -> Path:
        """A file an earlier stage writes; missing, a one-line error naming the command that makes it."""
        path = self.dir / name
        if not path.is_file():
            raise ConfigError(f"calm {stage}: {path} is missing; run the {maker} stage first: calm-rag calm {maker} "
                              f"--run {self.dir}, or calm-rag calm run for every stage")
        return path

    def _digest(self, *names: str) -> str | None:
        """sha256 of the run folder's files `names`, byte for byte (None when one is missing)."""
        import hashlib

        digest = hashlib.sha256()
        for name in names:
            if not (self.dir / name).is_file():
                return None
            digest.update((self.dir / name).read_bytes())
        return digest.hexdigest()

    def pairs(self, translate=None) -> dict[str, Any]:
        """Preference pairs from the samples and votes; kept as they are when made from the same samples, votes
        and settings (so `calm run` resumed after the pairs does not translate again and retrain on new pairs)."""
        from calm_rag.pairs import build_pairs, write_pairs

        from calm_rag.vote import training_signal

        started = time.time()
        gens_path = self._need("generations.jsonl", "pairs", "sample")
        votes_path = self._need("votes.jsonl", "pairs", "vote")
        inputs, done = self._digest("generations.jsonl", "votes.jsonl"), self.manifest["stages"].get("pairs", {})
        if (done.get("inputs") == inputs and done.get("made") == self._digest("pairs.jsonl", "pairs_counts.json")
                and done.get("min_agreement") == self.cfg.pairs.min_agreement
                and done.get("translate", True) == self.cfg.pairs.translate
                and done.get("signal", {}).get("vote") == self.cfg.calm.vote):
            log.info("pairs: %s is up to date (same samples, votes and settings); kept", self.dir / "pairs.jsonl")
            return json.loads((self.dir / "pairs_counts.json").read_text(encoding="utf-8"))
        made_with = self.manifest["stages"].get("vote", {}).get("vote", self.cfg.calm.vote)  # older runs: unknown
        if made_with != self.cfg.calm.vote:
            raise ConfigError(f"calm pairs: {votes_path} holds the calm.vote={made_with} vote, not "
                              f"calm.vote={self.cfg.calm.vote}; rerun the vote stage: calm-rag calm vote --run "
                              f"{self.dir} --vote {self.cfg.calm.vote}")
        gens = _canonical_order(list(read_jsonl(gens_path, Generation)), self.cfg.calm.languages)
        votes = {v.question_id: v for v in read_jsonl(votes_path, Vote)}
        if translate is None and self.cfg.pairs.translate:
            from calm_rag.translate import Translator

            translate = Translator(lambda: load_run_generator(self.cfg), cache=self.dir / "translations.jsonl")
        min_agreement = self.cfg.pairs.min_agreement
        pairs, report = build_pairs(gens, votes, langs=self.cfg.calm.languages, translate=translate,
                                    min_agreement=min_agreement)
        write_pairs(self.dir / "pairs.jsonl", pairs)
        counts = {lang: _as_dict(s) for lang, s in report.per_lang.items()}
        atomic_write_text(self.dir / "pairs_counts.json", json.dumps(counts, indent=2) + "\n")
        train_qs, _ = self.questions()
        gold = {q.id: q.gold for q in train_qs}
        signal = training_signal(gens, votes, gold, {q.id: len(q.options) for q in train_qs if q.options},
                                 min_agreement)
        signal["vote"] = self.cfg.calm.vote
        self._record("pairs", started, inputs=inputs, made=self._digest("pairs.jsonl", "pairs_counts.json"),
                     pairs=len(pairs),
                     per_lang={k: v["pairs"] for k, v in counts.items()},
                     no_winner=report.no_winner, min_agreement=min_agreement, translate=self.cfg.pairs.translate,
                     questions_kept=report.kept,
                     below_agreement=report.below_agreement, translated=report.translated(),
                     translated_share=round(report.translated_share(), 4),
                     translated_per_lang={k: v["from_translation"] for k, v in counts.items()},
                     translations_dropped=sum(v["translation_rejected"] for v in counts.values()), signal=signal)
        return counts

    def train(self):
        from calm_rag.train import train_dpo

        started = time.time()
        pairs_path = self._need("pairs.jsonl", "train", "pairs")
        if not any(True for _ in read_jsonl(pairs_path)):
            hint = (f"lower pairs.min_agreement (now {self.cfg.pairs.min_agreement}; --min-agreement), or "
                    if self.cfg.pairs.min_agreement is not None else "")
            raise ConfigError(f"calm train: {pairs_path} holds no preference pairs (every language agreed with the "
                              f"vote); {hint}sample more questions or languages")
        result = train_dpo(pairs_path, self.cfg.model.generator, self.dir / "train", self.cfg.train,
                           device=self.cfg.model.device)
        self._record("train", started, steps=result.steps, loss=result.loss, adapter=str(result.adapter_dir))
        return result

    def evaluate(self, which: Iterable[str] = ("base", "calm")) -> dict[str, Any]:
        """Answer the eval questions with the base model and the adapter, per retrieval mode."""
        from calm_rag.evaluate import load_report, markdown_table, plot_reports

        if "calm" in which:  # checked before the base model answers for minutes
            self._need("train/adapter/adapter_config.json", "eval", "train")
        started = time.time()
        _, eval_qs = self.questions()
        gold = {q.id: q.gold for q in eval_qs}
        reports = {}
        for model_name in which:
            adapter = str(self.dir / "train" / "adapter") if model_name == "calm" else None

            def adopt_base(name: str, path: Path) -> None:
                if adapter is None and self.cfg.calm.reuse:
                    self._adopt(f"eval/{path.name}", eval_qs, self.cfg.eval.n, "base evaluation")

            reports.update(evaluate_modes(self.cfg, eval_qs, gold, self.cfg.eval_languages, self.cfg.eval.retrieval,
                                          self.dir / "eval", adapter=adapter, retriever=self.retriever,
                                          before=adopt_base))
        # an evaluation in another retrieval mode adds to the folder's earlier ones (same questions), it does not hide them
        earlier = self.manifest["stages"].get("eval", {})
        kept = {n: load_report(self.dir / "eval" / f"{n}.json") for n in earlier.get("runs", [])
                if n not in reports and (self.dir / "eval" / f"{n}.json").is_file()}
        reports = {**kept, **reports}
        table = markdown_table(reports)
        atomic_write_text(self.dir / "eval" / "report.md", table + "\n")
        plot_reports(reports, self.dir / "eval" / "plot.png")
        self._record("eval", started - earlier.get("seconds", 0.0), runs=list(reports))  # seconds: all calls
        return reports

    def run_all(self, before_train: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Every stage; `before_train` gets the pairs stage's manifest record (the training signal) before DPO."""
        self.sample()
        self.vote()
        self.pairs()
        if before_train is not None:
            before_train(self.manifest["stages"]["pairs"])
        self.train()
        return self.evaluate()


def _weighting(vote: str) -> str:
    """calm.vote -> vote.majority_vote's weighting: one count per sample, or its critique score."""
    return "critique" if vote == "weighted" else "count"


def signal_so_far(folder: str | Path, vote: str | None = None, min_agreement: float | None = None) -> dict[str, Any]:
    """The training signal (vote accuracy, sample accuracy, winner shares) over the training questions whose
    units are all sampled, read from a run folder without writing to it, so it can watch a run that is
    still sampling, or show what another `vote` (majority, weighted) or `pairs.min_agreement` would train
    on before any pairs are made. Adds `complete` (questions counted) and `of` (training questions)."""
    from calm_rag.vote import training_signal, vote_all

    folder = Path(folder)
    config = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["config"]
    langs, n = config["calm"]["languages"], config["generate"]["n"]
    train_ids = set(json.loads((folder / "split.json").read_text(encoding="utf-8"))["train"])
    questions = {q.id: q for q in read_jsonl(folder / "questions.jsonl", Question) if q.id in train_ids}
    path = folder / "generations.jsonl"
    gens = list(read_jsonl(path, Generation)) if path.is_file() else []
    per_question: dict[str, int] = {}
    for g in gens:
        per_question[g.question_id] = per_question.get(g.question_id, 0) + 1
    complete = {qid for qid, count in per_question.items() if count == n * len(langs)}
    gens = _canonical_order([g for g in gens if g.question_id in complete], langs)
    vote = vote or config["calm"].get("vote", "majority")
    if vote not in VOTES:
        raise ConfigError(f"signal: vote={vote!r}; use majority or weighted")
    votes = vote_all(gens, langs=langs, weighting=_weighting(vote))
    signal = training_signal(gens, votes, {q: questions[q].gold for q in complete},
                             {q: len(questions[q].options) for q in complete if questions[q].options}, min_agreement)
    return {**signal, "vote": vote, "complete": len(complete), "of": len(questions)}


def as_current(section: Any, name: str) -> Any:
    """A manifest config section written by an older calm-rag, read as today's: options removed since are
    dropped, options added since take their defaults (what the older run did)."""
    from calm_rag.config import SECTIONS

    if not isinstance(section, dict) or name not in SECTIONS:
        return section
    out = {}
    for f in dataclasses.fields(SECTIONS[name]):
        if f.name in section:
            out[f.name] = section[f.name]
        elif f.default is not dataclasses.MISSING:
            out[f.name] = json.loads(json.dumps(f.default))
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = json.loads(json.dumps(f.default_factory()))
    return out


def _comparable(section: Any, name: str) -> Any:
    """A config section as two starts of one run folder must agree on it: read as today's, data paths
    normalised (a/b/../c is a/c), minus what may change between stages."""
    import os

    section = as_current(section, name)
    if name == "data" and isinstance(section, dict):
        section = {**section, "files": {k: os.path.normpath(v) for k, v in (section.get("files") or {}).items()},
                   "split": os.path.normpath(section["split"]) if section.get("split") else section.get("split")}
    return _without(section, name)


def _without(section: Any, name: str) -> Any:
    """A manifest config section minus the settings a run folder may change between stages: calm.vote, and the
    retrieval settings of a zero-shot run (its samples read no passage; an evaluation with retrieval may name an
    index, a passage count and a threshold, which each evaluated row records: `row_retrieval`)."""
    if name == "calm" and isinstance(section, dict):
        return {k: v for k, v in section.items() if k != "vote"}
    if name == "selfrag" and isinstance(section, dict) and section.get("retrieval") == "never":
        return {k: v for k, v in section.items() if k not in ("index", "top_k", "threshold")}
    return section


def row_retrieval(cfg: RunConfig, mode: str) -> dict[str, Any]:
    """The retrieval settings one evaluated row answered with (none for a zero-shot row)."""
    if mode == "never":
        return {}
    index = cfg.selfrag.index
    settings = {"index": str(Path(index).resolve()) if index else None, "top_k": cfg.selfrag.top_k}
    return {**settings, "threshold": cfg.selfrag.threshold} if mode == "adaptive" else settings


def check_row_retrieval(out_dir: Path, name: str, settings: dict[str, Any]) -> None:
    """A row resumes only with the retrieval settings it started with (`<row>.retrieval.json`), so one row
    never mixes passage counts or indexes."""
    path = out_dir / f"{name}.retrieval.json"
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old != settings:
            changed = ", ".join(f"{k} {old.get(k)} -> {settings.get(k)}" for k in sorted(set(old) | set(settings))
                                if old.get(k) != settings.get(k))
            raise ConfigError(f"{path}: row {name} was answered with other retrieval settings ({changed}); pass the "
                              f"same --index/-k, or delete {out_dir / name}.* to answer it again")
        return
    atomic_write_text(path, json.dumps(settings, indent=2) + "\n")


def _shared_settings(config: dict[str, Any], section: str) -> Any:
    """A manifest config section as two runs sharing samples must agree on it (the eval languages as
    evaluated)."""
    value = _comparable(config.get(section), section)
    if section == "eval" and isinstance(value, dict):
        return {**value, "languages": value.get("languages") or config.get("calm", {}).get("languages")}
    return value


def _canonical_order(gens: list[Generation], langs: Iterable[str]) -> list[Generation]:
    """Languages in config order, samples in order: ties in the vote break the same way every run."""
    rank = {lang: i for i, lang in enumerate(langs)}
    return sorted(gens, key=lambda g: (rank.get(g.lang, len(rank)), g.sample))


def _as_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(obj)


def demo_config(quick: bool = False) -> RunConfig:
    """The README's main job: demo index, a few demo questions in three languages, short DPO.

    Sized to finish in minutes on a 2-core CPU with the packaged 0.5B generator; every number
    can be raised in a run YAML (see scripts/runs/).
    """
    return load_run_config(None, **{
        "calm": {"languages": ("en", "zh", "fr")},
        "generate": {"n": 2, "max_new_tokens": 64, "temperature": 0.8},
        "selfrag": {"top_k": 2, "retrieval": "always"},
        "data": {"eval_fraction": 0.5, "max_train": 2 if quick else 4, "max_eval": 2 if quick else 4},
        "train": {"max_steps": 2 if quick else 6, "batch_size": 1, "grad_accum": 2, "max_length": 768,
                  "learning_rate": 5e-5, "save_steps": 4},
        "eval": {"n": 1, "retrieval": ("always",)},
    })


def run_demo(out: str | Path, quick: bool = False) -> dict[str, Any]:
    return Run(out, demo_config(quick)).run_all()
