"""Typed records and their JSONL files: one schema per record type, atomic writes, safe appends."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar


class RecordError(ValueError):
    """A JSONL line that does not match its record schema; the message names file and line."""


@dataclass(frozen=True)
class Question:
    """One multiple-choice (or open) question in one language."""

    id: str
    lang: str
    stem: str
    options: dict[str, str] = field(default_factory=dict)  # letter -> option text, in order
    gold: str | None = None  # gold letter, None when unknown
    dataset: str = ""
    instruction: str = ""  # the dataset's own instruction text, when it has one


@dataclass(frozen=True)
class Document:
    """One corpus document, the ../shared/corpora schema."""

    id: str
    title: str
    contents: str
    lang: str
    source: str


@dataclass(frozen=True)
class Passage:
    """One chunk of a document as stored in an index."""

    id: str  # chunk id: "<doc_id>#<n>"
    doc_id: str
    title: str
    text: str
    lang: str
    source: str


@dataclass(frozen=True)
class Hit:
    """A retrieved passage with its similarity score."""

    score: float
    passage: Passage


@dataclass(frozen=True)
class Critique:
    """Self-RAG critique of one generation (probabilities, not log-probs)."""

    p_retrieve: float | None = None  # p([Retrieval]) / (p([Retrieval]) + p([No Retrieval]))
    rel: float | None = None
    sup: float | None = None
    use: float | None = None
    score: float = 0.0


@dataclass(frozen=True)
class Generation:
    """One sampled answer to one question in one language."""

    question_id: str
    lang: str
    sample: int
    text: str  # the raw completion the model sampled for `prompt`, byte for byte (its own reflection tokens only)
    letter: str | None
    critique: Critique = field(default_factory=Critique)
    passage_ids: tuple[str, ...] = ()
    prompt: str = ""
    completed: bool = False  # the letter came from the answer-cue step (rag.SelfRag._complete_letters)
    completion: str = ""  # with `completed`: the cue and letter that step appended ("\nAnswer: B"), not in `text`


@dataclass(frozen=True)
class Vote:
    """The cross-lingual vote on one question."""

    question_id: str
    winner: str | None  # None: no parseable answer, or an unbroken tie
    counts: dict[str, float] = field(default_factory=dict)
    tie: bool = False
    n_unparseable: int = 0


@dataclass(frozen=True)
class PreferencePair:
    """A DPO pair in trl's column names."""

    prompt: str
    chosen: str
    rejected: str
    question_id: str = ""
    lang: str = ""
    chosen_source: str = "sample"  # "sample" (a sampled completion) or "translation" (not the model's own sample)


R = TypeVar("R")


def to_dict(record: Any) -> dict[str, Any]:
    return dataclasses.asdict(record)


def from_dict(cls: type[R], data: dict[str, Any], where: str = "") -> R:
    """Build a record from a dict, rejecting unknown or missing fields with a clear message."""
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - set(names)
    if unknown:
        raise RecordError(f"{where}: unknown field(s) {sorted(unknown)} for {cls.__name__}; "
                          f"expected {sorted(names)}")
    required = [n for n, f in names.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [n for n in required if n not in data]
    if missing:
        raise RecordError(f"{where}: missing field(s) {missing} for {cls.__name__}")
    kwargs = dict(data)
    if cls is Hit and isinstance(kwargs.get("passage"), dict):
        kwargs["passage"] = from_dict(Passage, kwargs["passage"], where)
    if cls is Generation:
        if isinstance(kwargs.get("critique"), dict):
            kwargs["critique"] = from_dict(Critique, kwargs["critique"], where)
        if "passage_ids" in kwargs:
            kwargs["passage_ids"] = tuple(kwargs["passage_ids"])
    return cls(**kwargs)


def read_jsonl(path: str | Path, cls: type[R] | None = None) -> Iterator[Any]:
    """Yield dicts (or records of `cls`) from a JSONL file; a bad line raises naming file:line.

    A final line without its newline is a write cut short by an interrupt: it is ignored, so a
    resumed stage rewrites that record instead of failing.
    """
    path = Path(path)
    with path.open("r", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    complete, tail = lines[:-1], lines[-1]
    for lineno, line in enumerate(complete, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RecordError(f"{path}:{lineno}: not valid JSON ({exc.msg}); fix or delete that line") from exc
        if not isinstance(data, dict):
            raise RecordError(f"{path}:{lineno}: expected a JSON object, got {type(data).__name__}")
        yield from_dict(cls, data, f"{path}:{lineno}") if cls else data
    if tail.strip():
        try:
            json.loads(tail)
        except json.JSONDecodeError:
            return  # truncated by an interrupted append
        raise RecordError(f"{path}:{len(lines)}: last line has no newline; the file was not written by calm-rag")


def _dumps(record: Any) -> str:
    data = record if isinstance(record, dict) else to_dict(record)
    return json.dumps(data, ensure_ascii=False)


@contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """A file that appears at `path` complete or not at all: written to a temp file beside it, synced,
    renamed on success and removed on error. Permissions follow the umask like open() (not mkstemp's 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | Path, records: Iterable[Any]) -> int:
    """Write all records atomically (temp file + rename); returns the count."""
    n = 0
    with atomic_file(path) as fh:
        for record in records:
            fh.write(_dumps(record) + "\n")
            n += 1
    return n


def repair_tail(path: str | Path) -> None:
    """Cut a trailing partial line left by an interrupted append, so appends start on a fresh line."""
    path = Path(path)
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with path.open("r+b") as fh:
            fh.truncate(cut)


class JsonlAppender:
    """Append records one line at a time, flushed and fsynced, for resumable stages."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_tail(self.path)
        self._fh = self.path.open("a", encoding="utf-8")

    def append(self, record: Any) -> None:
        self._fh.write(_dumps(record) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, read in blocks (model weights and corpora are large)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file via temp file + rename so readers never see half of it."""
    with atomic_file(path) as fh:
        fh.write(text)


def package_versions() -> dict[str, str]:
    """Python and the installed versions of the libraries a run's results depend on, for its manifest."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("calm-rag", "torch", "transformers", "trl", "peft", "sentence-transformers", "faiss-cpu",
                "llama_cpp_python"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
