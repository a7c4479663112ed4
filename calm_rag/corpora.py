"""Load retrieval corpora (JSONL[.gz], text folders, CSV/Parquet, HF datasets), validate, and chunk per language.

Bad corpus lines are the commonest reason an index build dies an hour in, so every document is
validated as it is read and the error names the file, the line and the fix. Chunks are sized in the
embedder's own tokens (characters mean very different things in English and Chinese), and Chinese /
Japanese text splits at sentence punctuation first since it has no spaces between sentences.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calm_rag.config import ChunkConfig
from calm_rag.languages import UnknownLanguageError, check_lang
from calm_rag.records import Document, Passage, file_sha256

log = logging.getLogger(__name__)

FIELDS = ("id", "title", "contents", "lang", "source")
FORMATS = ("auto", "jsonl", "text", "csv", "parquet", "hf")
# Sentence punctuation before spaces for CJK; clause marks as a later fallback.
CJK_SEPARATORS = ["\n\n", "\n", "。", "！", "？", "!", "?", "；", ";", "，", "、", ",", " ", ""]
SPACED_SEPARATORS = ["\n\n", "\n", ". ", "! ", "? ", "; ", ": ", ", ", " ", ""]
DEMO_CORPUS = Path(__file__).resolve().parent / "data" / "demo"  # the demo corpus, shipped as package data
TEXT_SUFFIXES = (".txt", ".md")
DATA_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson", ".csv", ".csv.gz", ".tsv", ".parquet")


class CorpusError(ValueError):
    """A corpus file or document that cannot be used; the message names file, line and fix."""


@dataclass(frozen=True)
class CorpusSource:
    """One corpus input: a file, a folder, or `hf:<dataset>`; with what the file itself does not say."""

    path: str = field(metadata={"help": "JSONL[.gz] file, text folder, CSV/Parquet file, or hf:<name or path>"})
    format: str = field(default="auto", metadata={"help": f"one of {FORMATS}; auto picks by suffix"})
    lang: str | None = field(default=None, metadata={
        "help": "language of every document (required for text folders; fills a missing lang column)"})
    source: str | None = field(default=None, metadata={"help": "source name when the data has no source field"})
    columns: Mapping[str, str] = field(default_factory=dict, metadata={
        "help": "field -> column for CSV/Parquet/HF, e.g. {contents: text, id: doc_id}"})
    split: str = field(default="train", metadata={"help": "split of a Hugging Face dataset"})
    limit: int | None = field(default=None, metadata={"help": "read at most this many documents (benchmarks)"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", str(self.path))
        if self.format not in FORMATS:
            raise ValueError(f"corpus {self.path}: format {self.format!r} unknown; use one of {', '.join(FORMATS)}")
        if self.lang is not None:
            object.__setattr__(self, "lang", check_lang(self.lang, f"corpus {self.path}"))
        bad = set(self.columns) - set(FIELDS)
        if bad:
            raise ValueError(f"corpus {self.path}: columns maps unknown field(s) {sorted(bad)}; "
                             f"map only {', '.join(FIELDS)}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"corpus {self.path}: limit={self.limit} must be >= 1 or unset")

    def kind(self) -> str:
        """The concrete format: auto resolved by suffix."""
        if self.format != "auto":
            return self.format
        p = self.path
        if p.startswith("hf:"):
            return "hf"
        low = p.lower()
        if low.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson")):
            return "jsonl"
        if low.endswith((".csv", ".csv.gz", ".tsv")):
            return "csv"
        if low.endswith(".parquet"):
            return "parquet"
        if Path(p).is_dir():
            return "hf" if (Path(p) / "dataset_info.json").exists() or (Path(p) / "state.json").exists() else "text"
        raise CorpusError(f"{p}: cannot tell the corpus format from the name; set format to one of "
                          f"{', '.join(FORMATS[1:])}")


# ---------------------------------------------------------------- validation

def make_document(data: Mapping[str, Any], where: str) -> Document:
    """Validate one raw record into a Document; every failure names `where` and the fix."""
    missing = [f for f in FIELDS if f not in data or data[f] is None]
    if missing:
        raise CorpusError(f"{where}: missing field(s) {missing}; every document needs {', '.join(FIELDS)}")
    values = {}
    for f in FIELDS:
        v = data[f]
        if not isinstance(v, str):
            if isinstance(v, (int, float)) and not isinstance(v, bool) and f in ("id", "title"):
                v = str(v)
            else:
                raise CorpusError(f"{where}: field {f!r} is {type(v).__name__}, not a string; write it as a string")
        if not v.strip():
            raise CorpusError(f"{where}: field {f!r} is empty; fill it or delete that document")
        values[f] = v
    try:
        values["lang"] = check_lang(values["lang"], where)
    except UnknownLanguageError as exc:
        raise CorpusError(str(exc)) from exc
    values["id"] = values["id"].strip()
    if "#" in values["id"]:
        raise CorpusError(f"{where}: id {values['id']!r} contains '#', which chunk ids use as separator; "
                          "replace it (e.g. with '-')")
    return Document(**values)


# ---------------------------------------------------------------- readers

def _relative_hint(path: Path) -> str:
    """Where a relative path was looked for: command-line paths are relative to the working folder (recipes
    resolve theirs before this, from the folder above the recipe's folder)."""
    return "" if Path(path).is_absolute() else f" (a relative path is from the working folder, {Path.cwd()})"


def _open_bytes(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")  # type: ignore[return-value]


def read_jsonl_documents(path: str | Path) -> Iterator[Document]:
    """Documents from a JSONL or JSONL.gz file in the ../shared/corpora schema."""
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"{path}: no such corpus file; check the path{_relative_hint(path)}")
    lineno = 0
    try:
        with _open_bytes(path) as fh:
            for lineno, raw in enumerate(fh, 1):
                where = f"{path}:{lineno}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise CorpusError(f"{where}: bytes at column {exc.start + 1} are not UTF-8; "
                                      "re-save the file as UTF-8") from exc
                if not line.strip():
                    continue
                try:
                    data = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise CorpusError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); "
                                      "fix or delete that line") from exc
                if not isinstance(data, dict):
                    raise CorpusError(f"{where}: expected a JSON object with {', '.join(FIELDS)}, "
                                      f"got {type(data).__name__}")
                yield make_document(data, where)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise CorpusError(f"{path}: gzip data is truncated or corrupt after line {lineno} ({exc}); "
                          "re-download or re-compress the file") from exc


def read_text_folder(path: str | Path, lang: str | None, source: str | None = None) -> Iterator[Document]:
    """One document per .txt/.md file (sorted, recursive): id from the relative path, title its first line."""
    root = Path(path)
    others = sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(DATA_SUFFIXES))
    if others:  # a text folder reads only text files: data files in it would be dropped without a word
        raise CorpusError(f"{root}: holds {len(others)} data file(s) ({', '.join(str(p) for p in others[:3])}"
                          f"{', ...' if len(others) > 3 else ''}) that a text folder does not read; list them as "
                          f"corpora of their own (e.g. {root}/*.jsonl) and the text files in a folder without them")
    if lang is None:
        raise CorpusError(f"{root}: a text folder needs its language; pass --lang en (index build --corpus) or give "
                          f"its recipe entry lang: en")
    lang = check_lang(lang, str(root))
    source = source or root.name
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    if not files:
        raise CorpusError(f"{root}: no {'/'.join(TEXT_SUFFIXES)} files found; point at a folder of text files")
    for f in files:
        raw = f.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise CorpusError(f"{f}:{line}: bytes at offset {exc.start} are not UTF-8; re-save the file as UTF-8") \
                from exc
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        rel = f.relative_to(root).with_suffix("").as_posix().replace("#", "-")
        data = {"id": f"{source}-{rel}", "title": (lines[0][:200] if lines else ""),
                "contents": "\n".join(lines), "lang": lang, "source": source}
        yield make_document(data, str(f))


def _rows_to_documents(rows: Iterable[Mapping[str, Any]], spec: CorpusSource, where_prefix: str,
                       default_source: str) -> Iterator[Document]:
    cols = {f: spec.columns.get(f, f) for f in FIELDS}
    for i, row in enumerate(rows, 1):
        where = f"{where_prefix} row {i}"

        def get(f: str) -> Any:
            v = row.get(cols[f])
            return None if v is None or (isinstance(v, float) and v != v) else v  # NaN: missing

        if cols["contents"] not in row:
            raise CorpusError(f"{where}: no column {cols['contents']!r} for contents; map it with "
                              f"columns: {{contents: <column>}} (columns are {sorted(row)})")
        doc_id = get("id") if cols["id"] in row else f"{default_source}-{i}"
        data = {
            "id": doc_id,
            "contents": get("contents"),
            "title": get("title") if cols["title"] in row else doc_id,
            "lang": get("lang") if cols["lang"] in row and get("lang") else spec.lang,
            "source": get("source") if cols["source"] in row and get("source") else (spec.source or default_source),
        }
        if data["lang"] is None:
            raise CorpusError(f"{where}: no language; add a lang column, or pass --lang en (index build --corpus) "
                              f"or give its recipe entry lang: en")
        yield make_document(data, where)


def read_table(spec: CorpusSource) -> Iterator[Document]:
    """CSV or Parquet rows mapped to documents through `spec.columns`."""
    import pandas as pd

    path = Path(spec.path)
    if not path.exists():
        raise CorpusError(f"{path}: no such corpus file; check the path")
    try:
        if spec.kind() == "parquet":
            frame = pd.read_parquet(path)
        else:
            sep = "\t" if path.name.lower().endswith(".tsv") else ","
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, sep=sep, encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start}); re-save the file as UTF-8") from exc
    except (ValueError, OSError) as exc:  # pandas parser errors are ValueErrors; pyarrow's are OSErrors
        raise CorpusError(f"{path}: cannot read as {spec.kind()} ({str(exc).splitlines()[0]}); "
                          "fix the file or set format") from exc
    yield from _rows_to_documents(frame.to_dict("records"), spec, str(path), spec.source or path.name.split(".")[0])


def read_hf(spec: CorpusSource | None = None, dataset: Any = None) -> Iterator[Document]:
    """A Hugging Face dataset: `hf:<name>` (load_dataset), a saved folder (load_from_disk), or a Dataset."""
    name = "dataset"
    if dataset is None:
        if spec is None:
            raise TypeError("read_hf needs a CorpusSource or a dataset")
        import datasets

        name = spec.path[3:] if spec.path.startswith("hf:") else spec.path
        try:
            if Path(name).is_dir() and ((Path(name) / "dataset_info.json").exists()
                                        or (Path(name) / "state.json").exists()):
                dataset = datasets.load_from_disk(name)
                if isinstance(dataset, datasets.DatasetDict):
                    dataset = dataset[spec.split]
            else:
                dataset = datasets.load_dataset(name, split=spec.split)
        except (FileNotFoundError, ValueError, ConnectionError, KeyError) as exc:
            raise CorpusError(f"hf:{name}: cannot load split {spec.split!r} ({str(exc).splitlines()[0]}); "
                              "check the name/split, or save the dataset locally with save_to_disk") from exc
    spec = spec or CorpusSource(path=f"hf:{name}")
    yield from _rows_to_documents(iter(dataset), spec, f"hf:{name}", spec.source or Path(name).name)


GLOB_CHARS = "*?["


def expand_sources(items: Iterable[Any]) -> list[Any]:
    """Expand glob patterns in paths / CorpusSources into one entry per matching file (sorted)."""
    import dataclasses
    import glob

    out: list[Any] = []
    for item in items:
        path = item.path if isinstance(item, CorpusSource) else item if isinstance(item, (str, Path)) else None
        if path is None or str(path).startswith("hf:") or not any(c in str(path) for c in GLOB_CHARS):
            out.append(item)
            continue
        matches = sorted(glob.glob(str(path)))
        if not matches:
            raise CorpusError(f"{path}: no file matches this pattern; check the path{_relative_hint(Path(path))}")
        for m in matches:
            out.append(dataclasses.replace(item, path=m) if isinstance(item, CorpusSource) else m)
    return out


def corpus_files(items: Iterable[Any]) -> list[dict[str, Any]]:
    """Path, size and sha256 of every file-backed corpus input: what a manifest records."""
    files = []
    for item in expand_sources(items):
        path = item.path if isinstance(item, CorpusSource) else item if isinstance(item, (str, Path)) else None
        if path is not None and Path(path).is_file():
            files.append({"path": str(path), "bytes": Path(path).stat().st_size, "sha256": file_sha256(path)})
    return files


def read_source(spec: CorpusSource | str | Path) -> Iterator[Document]:
    """Documents of one corpus input, validated, in file order, at most `spec.limit`."""
    if not isinstance(spec, CorpusSource):
        spec = CorpusSource(path=str(spec))
    kind = spec.kind()
    if kind == "jsonl":
        docs = read_jsonl_documents(spec.path)
    elif kind == "text":
        docs = read_text_folder(spec.path, spec.lang, spec.source)
    elif kind in ("csv", "parquet"):
        docs = read_table(spec)
    else:
        docs = read_hf(spec)
    for i, doc in enumerate(docs):
        if spec.limit is not None and i >= spec.limit:
            break
        yield doc


def iter_documents(items: Iterable[Any]) -> Iterator[Document]:
    """Documents from a mix of Documents, paths, CorpusSources and HF Datasets; ids unique across all."""
    seen: dict[str, str] = {}
    for item in expand_sources(items):
        if isinstance(item, Document):
            stream: Iterable[Document] = [make_document(item.__dict__, f"document {item.id!r}")]
            label = "<documents>"
        elif isinstance(item, (str, Path, CorpusSource)):
            stream = read_source(item)
            label = str(item.path if isinstance(item, CorpusSource) else item)
        elif hasattr(item, "column_names") and hasattr(item, "__iter__"):  # datasets.Dataset
            stream = read_hf(dataset=item)
            label = "<dataset>"
        else:
            raise CorpusError(f"cannot read documents from a {type(item).__name__}; pass Documents, file or "
                              "folder paths, CorpusSources, or a datasets.Dataset")
        for n, doc in enumerate(stream, 1):
            first = seen.get(doc.id)
            if first is not None:
                raise CorpusError(f"{label} (document {n}): duplicate id {doc.id!r}, first seen in {first}; "
                                  "ids must be unique across all corpus files: rename or drop one")
            seen[doc.id] = label
            yield doc


def load_documents(items: Iterable[Any]) -> list[Document]:
    return list(iter_documents(items))


# ---------------------------------------------------------------- chunking

def make_splitter(lang: str, length_function: Callable[[str], int], cfg: ChunkConfig) -> Any:
    """A langchain RecursiveCharacterTextSplitter measuring embedder tokens, with per-language separators."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    separators = CJK_SEPARATORS if lang in cfg.cjk_langs else SPACED_SEPARATORS
    return RecursiveCharacterTextSplitter(
        separators=separators, keep_separator="end", chunk_size=cfg.max_tokens,
        chunk_overlap=cfg.overlap_tokens, length_function=length_function, strip_whitespace=True)


class _DocTokenLength:
    """The splitter's length function for one document at a time, tokenizing the document once.

    Every piece the splitter measures is a substring of the current document, so its token count is
    the number of document tokens starting inside it (found with str.find + bisect). Short strings
    (separators) and anything not found are counted directly, with a cache.
    """

    def __init__(self, count_tokens: Callable[[str], int], token_starts: Callable[[str], list[int]] | None):
        self.count_tokens = count_tokens
        self.token_starts = token_starts
        self.text = ""
        self.starts: list[int] = []
        self.cache: dict[str, int] = {}

    def set_document(self, text: str) -> int:
        """Tokenize `text` once; returns its token count."""
        self.text = text
        if self.token_starts is None:
            return self.count_tokens(text)
        self.starts = self.token_starts(text)
        return len(self.starts)

    def __call__(self, s: str) -> int:
        import bisect

        if len(s) > 16 and self.token_starts is not None:
            pos = self.text.find(s)
            if pos >= 0:
                return bisect.bisect_left(self.starts, pos + len(s)) - bisect.bisect_left(self.starts, pos)
        n = self.cache.get(s)
        if n is None:
            n = self.count_tokens(s)
            if len(self.cache) < 100_000:
                self.cache[s] = n
        return n


def chunk_documents(docs: Iterable[Document], counter: Any, cfg: ChunkConfig = ChunkConfig()) -> Iterator[Passage]:
    """Split documents into Passages `<doc_id>#<n>`; a document that fits stays one chunk.

    `counter`: the Encoder (anything with `count_tokens` and optionally `token_starts`) or a plain
    function text -> token count.
    """
    if callable(counter) and not hasattr(counter, "count_tokens"):
        length = _DocTokenLength(counter, None)
    else:
        length = _DocTokenLength(counter.count_tokens, getattr(counter, "token_starts", None))
    splitters: dict[str, Any] = {}
    for doc in docs:
        text = doc.contents.strip()
        if length.set_document(text) <= cfg.max_tokens:
            pieces = [text]
        else:
            if doc.lang not in splitters:
                splitters[doc.lang] = make_splitter(doc.lang, length, cfg)
            pieces = [p for p in splitters[doc.lang].split_text(text) if p.strip()] or [text]
        for n, piece in enumerate(pieces):
            yield Passage(id=f"{doc.id}#{n}", doc_id=doc.id, title=doc.title, text=piece,
                          lang=doc.lang, source=doc.source)


def passage_embed_text(p: Passage, cfg: ChunkConfig = ChunkConfig()) -> str:
    """The text the embedder sees for a passage: the title first unless the chunk already holds it."""
    if cfg.embed_title and p.title and p.title not in p.text:
        return f"{p.title}\n{p.text}"
    return p.text
