"""Index recipes: a named index (corpora, embedder, build settings, output) read from `indexes/*.yaml`
or built in, and the bundled demo index, built on first use under $CALM_RAG_HOME and reused."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calm_rag.config import ChunkConfig, IndexConfig
from calm_rag.corpora import CorpusSource, load_documents
from calm_rag.index import MANIFEST_FILE, IndexBuildError, build_index, check_output, is_index_folder

log = logging.getLogger(__name__)

DEFAULT_EMBEDDER = "multilingual-e5-small"


@dataclass(frozen=True)
class IndexRecipe:
    """A named index: which corpora, which embedder, how to build, where it goes."""

    name: str = field(metadata={"help": "recipe name (indexes/<name>.yaml)"})
    corpora: tuple[CorpusSource, ...] = field(metadata={"help": "corpus inputs; globs allowed"})
    embedder: str = field(default=DEFAULT_EMBEDDER, metadata={"help": "packaged name, folder or hub id"})
    index: IndexConfig = field(default_factory=IndexConfig, metadata={"help": "build settings"})
    output: Path = field(default=Path("indexes/default"), metadata={"help": "index folder"})

    def __post_init__(self) -> None:
        if not self.corpora:
            raise ValueError(f"recipe {self.name}: no corpora; list at least one corpus file under corpora:")


def _repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def find_recipe(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise IndexBuildError(f"{p}: no such recipe file")
        return p
    for base in (Path.cwd(), _repo_root()):
        candidate = base / "indexes" / f"{name_or_path}.yaml"
        if candidate.exists():
            return candidate
    known = sorted(q.stem for q in (_repo_root() / "indexes").glob("*.yaml"))
    raise IndexBuildError(f"no index recipe named {name_or_path!r}; known: {', '.join(known) or 'none'} "
                          "(or pass a path to a .yaml file)")


def load_recipe(name_or_path: str | Path) -> IndexRecipe:
    """Read `indexes/<name>.yaml` (or a path); relative paths are relative to the recipe's folder, as in every
    YAML file calm-rag reads (config.path_in_file); `hf:` datasets stay as written."""
    from calm_rag.config import ConfigError
    from calm_rag.config_files import path_in_file, read_yaml

    path = find_recipe(name_or_path)
    try:
        data = read_yaml(path)
    except ConfigError as exc:
        raise IndexBuildError(f"{exc}; fix the recipe") from exc
    known = {"name", "embedder", "corpora", "index", "chunk", "output", "description"}
    unknown = set(data) - known
    if unknown:
        raise IndexBuildError(f"{path}: unknown key(s) {sorted(unknown)}; use {', '.join(sorted(known))}")
    base = path.resolve().parent

    def resolve(p: str) -> str:
        return p if p.startswith("hf:") else str(path_in_file(base, p))

    sources = []
    for i, entry in enumerate(data.get("corpora") or [], 1):
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or "path" not in entry:
            raise IndexBuildError(f"{path}: corpora entry {i} needs a path (a string or {{path: ...}})")
        try:
            sources.append(CorpusSource(**{**entry, "path": resolve(str(entry["path"]))}))
        except TypeError as exc:
            raise IndexBuildError(f"{path}: corpora entry {i}: {exc}; allowed keys are "
                                  f"{[f.name for f in dataclasses.fields(CorpusSource)]}") from exc
    name = str(data.get("name") or path.stem)
    try:
        chunk = ChunkConfig(**(data.get("chunk") or {}))
        index_cfg = IndexConfig(**{**(data.get("index") or {}), "chunk": chunk})
    except TypeError as exc:
        raise IndexBuildError(f"{path}: {exc}; see IndexConfig / ChunkConfig fields in calm_rag/config.py") from exc
    output = Path(resolve(str(data.get("output") or name)))  # default: beside the recipe
    return IndexRecipe(name=name, corpora=tuple(sources), embedder=str(data.get("embedder") or DEFAULT_EMBEDDER),
                       index=index_cfg, output=output)


def build_from_recipe(recipe: IndexRecipe | str | Path, encoder: Any = None, *, overwrite: bool = False,
                      progress: bool = True, device: str | None = None) -> Path:
    """Build the index a recipe describes (the `calm-rag index build` entry point)."""
    from calm_rag.embed import load_encoder

    if not isinstance(recipe, IndexRecipe):
        recipe = load_recipe(recipe)
    # output and corpus are checked before the embedder loads (~20 s), so a typo fails in a second
    check_output(Path(recipe.output), overwrite)
    docs = load_documents(recipe.corpora)
    if not docs:
        raise IndexBuildError(f"no documents to index for {recipe.output}; check the corpus paths")
    encoder = encoder or load_encoder(recipe.embedder, device=device)
    return build_index(recipe.corpora, encoder, recipe.output, recipe.index, overwrite=overwrite, progress=progress,
                       documents=docs)


# ---------------------------------------------------------------- the bundled demo index


def demo_recipe(output: str | Path | None = None) -> IndexRecipe:
    """indexes/demo.yaml's index over the demo corpus shipped with the package (`corpora.DEMO_CORPUS`), built
    into `output` (default $CALM_RAG_HOME/indexes/demo): no repo checkout needed."""
    from calm_rag.corpora import DEMO_CORPUS
    from calm_rag.models import cache_home

    return IndexRecipe(name="demo", corpora=(CorpusSource(path=str(DEMO_CORPUS / "*.jsonl")),),
                       output=Path(output) if output else cache_home() / "indexes" / "demo")


def demo_index(progress: bool = True, device: str | None = None,
               on_build: Callable[[Path], None] | None = None) -> Path:
    """The default index of the shell and the demo: ./indexes/demo when the working folder holds a built one
    (`calm-rag index build --recipe demo` in the repo), else the bundled demo index in
    $CALM_RAG_HOME/indexes/demo, built on first use (a minute on CPU; an interrupted build resumes), then reused;
    `on_build(folder)` runs before a build starts (to tell the user why the first start is slow)."""
    local = Path("indexes") / "demo"
    if is_index_folder(local):
        return local
    recipe = demo_recipe()
    if not (recipe.output / MANIFEST_FILE).is_file():
        log.info("building the demo index in %s (first use)", recipe.output)
        if on_build is not None:
            on_build(recipe.output)
        build_from_recipe(recipe, progress=progress, device=device)
    return recipe.output
