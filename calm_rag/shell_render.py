"""The shell's rendering: one answered question (answer, critique badges, sources, raw outputs) and the
cross-lingual check, as rich renderables. Passage and model text pass through `selfrag.printable`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from calm_rag import selfrag
from calm_rag.records import Critique, Question

@dataclass
class Turn:
    """One answered question."""

    question: Question
    answer: Any  # calm_rag.rag.RagAnswer
    lang_source: str  # "detected" or "set"
    seconds: float
    mode: str  # native or verbalised critique
    raw_texts: list[str] = field(default_factory=list)  # what the model wrote, per passage



def badges(retrieved: bool, p_retrieve: float | None, critique: Critique) -> Text:
    """The critique as readable badges instead of reflection tokens."""
    rel, sup, use = selfrag.critique_tokens(critique)
    parts: list[tuple[str, str]] = []
    p = "" if p_retrieve is None else f" p={p_retrieve:.2f}"
    parts.append((f" retrieved{p} ", "black on green") if retrieved else (f" no retrieval{p} ", "black on grey70"))
    if rel is not None:
        ok = rel == selfrag.RELEVANT
        parts.append((f" {'relevant' if ok else 'irrelevant'} {critique.rel:.2f} ",
                      "black on green" if ok else "white on red"))
    if sup is not None:
        label, style = {selfrag.FULLY_SUPPORTED: ("fully supported", "black on green"),
                        selfrag.PARTIALLY_SUPPORTED: ("partially supported", "black on yellow"),
                        selfrag.NO_SUPPORT: ("not supported", "white on red")}[sup]
        parts.append((f" {label} {critique.sup:.2f} ", style))
    if use is not None:
        k = selfrag.UTILITY_TOKENS.index(use) + 1
        style = "black on green" if k >= 4 else "black on yellow" if k == 3 else "white on red"
        parts.append((f" utility {k}/5 ", style))
    parts.append((f" score {critique.score:.2f} ", "bold"))
    out = Text()
    for i, part in enumerate(parts):
        if i:
            out.append(" ")
        out.append(*part)
    return out


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def render_turn(turn: Turn, raw: bool = False) -> RenderableType:
    """Answer panel, critique badges, sources table (and raw outputs when asked)."""
    q, a = turn.question, turn.answer
    best = a.best(0)
    letter = a.letters[0]
    body = Text()
    said = selfrag.printable(best.answer, keep_lines=True).strip()  # model output: no escape sequences reach the terminal
    if q.options:
        if letter:
            chosen = f"{letter}. {q.options.get(letter, '?')}"
            body.append(chosen, style="bold green")
            if said.strip(" .:()") in (letter, chosen):  # the model wrote only the letter: nothing more to show
                said = ""
        else:
            body.append("no option letter found in the answer", style="bold yellow")
        if said:
            body.append("\n")
    if said or not q.options:
        body.append(said or "(empty answer)")
    # a letter the model did not write itself (the answer-cue step picked it) is marked as such
    completed = letter is not None and letter == best.letter and best.completed
    title = (f"answer · {q.lang} ({turn.lang_source})" + (f" · option {letter}" if letter else "")
             + (" (after the answer cue)" if completed else ""))
    parts: list[RenderableType] = [
        Panel(body, title=Text(title), title_align="left",
              subtitle=Text(f"{turn.mode} critique · {turn.seconds:.1f}s"), subtitle_align="right"),
        badges(a.retrieved, a.p_retrieve, best.critique),
    ]
    if a.hits:
        table = Table(title="sources", title_justify="left", expand=False)
        for col in ("", "#", "sim", "title", "source", "lang", "ans", "relevant", "support", "utility", "crit"):
            table.add_column(col, justify="right" if col in ("#", "sim", "relevant", "support", "crit") else "left")
        for i, cand in enumerate(a.samples[0]):
            hit = cand.hit
            if hit is None:
                continue
            c = cand.critique
            use = selfrag.critique_tokens(c)[2]
            table.add_row("★" if cand is best else "", str(i + 1), f"{hit.score:.3f}", Text(selfrag.printable(hit.passage.title)),
                          Text(hit.passage.source), hit.passage.lang, cand.letter or "-", _fmt(c.rel), _fmt(c.sup),
                          "-" if use is None else f"{selfrag.UTILITY_TOKENS.index(use) + 1}/5", f"{c.score:.2f}")
        parts.append(table)
        parts.append(Text("★ answer shown · sim = cosine similarity · relevant/support/utility = critique of the "
                          "answer from that passage", style="dim"))
    else:
        parts.append(Text("sources: none (retrieval not triggered; :retrieval always forces it)", style="dim"))
    if raw:
        for i, cand in enumerate(a.samples[0]):
            where = f"[{i + 1}] {selfrag.printable(cand.hit.passage.title)}" if cand.hit else "(no passage)"
            model_text = (turn.raw_texts[i] if i < len(turn.raw_texts) else cand.text).strip()
            # the critique shown as Self-RAG's reflection tokens around the answer (display only; what the
            # model wrote, which pairs and records keep, is the line below)
            view = selfrag.render_output(cand.answer, cand.critique, cand.hit.passage if cand.hit else None,
                                         retrieved=cand.hit is not None, include_passage=False)
            parts.append(Panel(Group(Text(selfrag.printable(view, keep_lines=True)), Text("model wrote: ", style="dim")
                                     + Text(selfrag.printable(model_text, keep_lines=True))),
                               title=Text(f"raw Self-RAG output {where}"), title_align="left", border_style="dim"))
    return Group(*parts)


def render_xl(q: Question, turns: dict[str, Turn], vote: Any, consistency: float | None) -> RenderableType:
    table = Table(title=f"cross-lingual check of {q.id}", title_justify="left")
    for col in ("lang", "question", "ans", "score", "answer"):
        table.add_column(col)
    for lang, t in turns.items():
        best = t.answer.best(0)
        table.add_row(lang, Text(_short(t.question.stem, 40)), t.answer.letters[0] or "-",
                      f"{best.critique.score:.2f}", Text(_short(best.answer, 60)))
    counts = ", ".join(f"{k}={v:g}" for k, v in vote.counts.items()) or "no letters"
    winner = vote.winner or "none"
    cons = "n/a" if consistency is None else f"{consistency:.2f}"
    summary = Text.assemble(("vote: ", "bold"), (winner, "bold green"), f" ({counts}{', tie' if vote.tie else ''})   ",
                            ("consistency: ", "bold"), cons,
                            f" (agreeing language pairs / all, {len(turns)} languages)")
    return Group(table, summary)


def _short(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n - 1] + "…"
