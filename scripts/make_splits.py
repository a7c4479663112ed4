"""Make the one-time train/dev splits of the training pools, by question, into splits/*.json.

A question and all its translations land on one side: the split is over question ids, which
`calm_rag.qa.load_questions` assigns as `<set>-<part>-<index>` (e.g. `xcsqa-train-12`) with no
language in them, so the same question has the same id in every language file of a set. The
split itself is a seeded hash ranking of the ids (the `DEV_SIZE` lowest sha256(seed:id) go to
dev), so it needs no RNG, reads the same in any language, and re-running the script rewrites
the same bytes. Run configs use a split with `data: {split: splits/xcsqa.json}`.

Each set also gets `<name>-val.json`, a validation slice cut from the **train** list (its last
`VAL_SIZE` ids as "dev", the rest as "train"), for choosing hyperparameters without touching
the dev split: runs train on the front of the train list, so the slice is never trained on
while a run's max_train stays below len(train) - VAL_SIZE.

    .venv/bin/python scripts/make_splits.py [--data ../shared/data] [--out splits] [--check]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from calm_rag.qa import align_parallel, load_questions  # noqa: E402
from calm_rag.records import atomic_write_text, file_sha256  # noqa: E402

SEED = 0
DEV_SIZE = 200  # questions per set; the rest are the training pool
VAL_SIZE = 50  # the last questions of the train list: the validation slice (hyperparameters only)
# split file name -> (folder under data/, its languages, the original language first)
SETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "xcsqa": ("xcsqa/train", ("en", "zh", "fr", "de", "it", "ja")),
    "medqa-usmle": ("medqa/usmle", ("en", "zh", "fr")),
    "medqa-mcmle": ("medqa/mcmle", ("zh", "en", "fr")),
}
METHOD = ("by question id: the dev_size ids with the lowest sha256('<seed>:<id>') are dev, the rest train; "
          "lists in data order")


def split_ids(ids: Sequence[str], dev_size: int, seed: int = SEED) -> tuple[list[str], list[str]]:
    """(train, dev) id lists in the given order; dev holds the `dev_size` ids ranked lowest by hash."""
    dups = [i for i, c in Counter(ids).items() if c > 1]
    if dups:
        dup = dups[0]
        raise ValueError(f"duplicate question id {dup!r}: a split needs one id per question")
    if not 0 <= dev_size <= len(ids):
        raise ValueError(f"dev_size={dev_size} but there are {len(ids)} questions; use 0..{len(ids)}")
    rank = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    dev = set(rank[:dev_size])
    return [i for i in ids if i not in dev], [i for i in ids if i in dev]


def make_split(data_dir: Path, name: str, dev_size: int = DEV_SIZE, seed: int = SEED) -> str:
    """The split file's text for one set: loads every language and checks their ids agree."""
    folder, langs = SETS[name]
    paths = {lang: data_dir / folder / f"{lang}.json" for lang in langs}
    sets = {lang: load_questions(p, lang=lang) for lang, p in paths.items()}
    ref = langs[0]
    ref_ids = [q.id for q in sets[ref]]
    for lang, qs in sets.items():
        ids = [q.id for q in qs]
        if ids != ref_ids:
            raise ValueError(f"{paths[lang]}: its {len(ids)} question ids differ from {paths[ref]}'s "
                             f"{len(ref_ids)} (e.g. {ids[:2]} vs {ref_ids[:2]}); the files of a set must be "
                             f"parallel, item i being the same question in every language")
    aligned = align_parallel(sets)
    train, dev = split_ids(ref_ids, dev_size, seed)
    doc = {
        "name": name,
        "source": {lang: f"data/{folder}/{lang}.json" for lang in langs},
        "sha256": {lang: file_sha256(p) for lang, p in paths.items()},
        "langs": list(langs),
        "n_questions": len(ref_ids),
        "dev_size": dev_size,
        "seed": seed,
        "method": METHOD,
        "note": (f"~{dev_size} dev questions per set, held out in every language; "
                 f"{len(aligned.mismatches)} question(s) disagree across languages (gold, options) and are "
                 f"dropped by runs with data.drop_mismatched"),
        "train": train,
        "dev": dev,
    }
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


def make_val_split(split_text: str, val_size: int = VAL_SIZE) -> str:
    """The validation split of a set's split file: its train list's last `val_size` ids as "dev"."""
    doc = json.loads(split_text)
    train = doc["train"]
    doc.update(name=doc["name"] + "-val", dev_size=val_size, train=train[:-val_size], dev=train[-val_size:],
               method=f"validation slice of {doc['name']}.json's train list: its last {val_size} ids are 'dev', "
                      f"the rest 'train'; {doc['name']}.json's dev ids are in neither",
               note=f"for hyperparameter choices only; runs train on the front of the train list (max_train < "
                    f"{len(train) - val_size} keeps the slice unseen)")
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="the shared data folder")
    p.add_argument("--out", default=str(ROOT / "splits"), help="where the split files go")
    p.add_argument("--check", action="store_true", help="only check that the files in --out are up to date")
    args = p.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    if not data.is_dir():
        print(f"make_splits: no data folder at {data}; pass --data", file=sys.stderr)
        return 2
    stale = []
    for name in SETS:
        text = make_split(data, name)
        for path, body in ((out / f"{name}.json", text), (out / f"{name}-val.json", make_val_split(text))):
            if args.check:
                if not path.is_file() or path.read_text(encoding="utf-8") != body:
                    stale.append(str(path))
                continue
            atomic_write_text(path, body)
            doc = json.loads(body)
            print(f"{path}: {doc['n_questions']} questions -> train {len(doc['train'])}, dev {len(doc['dev'])}")
    if stale:
        print(f"make_splits: out of date: {', '.join(stale)}; rerun without --check", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
