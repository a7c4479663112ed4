"""The Self-RAG generator at run time: decide retrieval, answer once per passage, critique, score.

Two critique modes behind one interface, picked from the tokenizer:
- native: the vocabulary holds the reflection tokens; the model writes them and their
  probabilities are read from the logits at the steps where it wrote them (and, for the
  retrieval decision, at the first response position);
- verbalised: any instruct model; short critic prompts ask the same four questions and the
  next-token probabilities of the verbalised options ("Yes"/"No", "1".."5") stand in for the
  reflection tokens' probabilities.
Both yield the same probability table, so `selfrag.score_critique` serves both.

A candidate's `text` is the completion exactly as the generator returned it for its prompt (a
native model's own reflection tokens included; a verbalised model's answer, with no tokens):
DPO pairs are built from it, so it is never re-rendered from the critique (on-policy pairs).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from calm_rag import selfrag
from calm_rag.config import GenerateConfig, SelfRagConfig
from calm_rag.generate import Generator
from calm_rag.languages import text_for
from calm_rag.records import Critique, Generation, Hit, Question
from calm_rag.sampling import unit_seed

log = logging.getLogger(__name__)

# Verbalised critic prompts (English; the question and passage stay in their own language). Relevance
# starts like the answer prompt (the reference passage first); support and utility are follow-up turns
# of the answer's own conversation, as Self-RAG's reflection tokens follow the answer in one sequence.
# So every critic prompt begins with text the generator has just read, and an engine with a prefix
# cache (llama.cpp backend) computes only each critic question.
CRITIC_RETRIEVAL = (
    "Question:\n{question}\n\nWould reading a reference document (encyclopedia, medical text) help to answer "
    "this question correctly? Answer Yes or No.")
CRITIC_RELEVANCE = (
    "Question:\n{question}\n\nDoes the reference passage above contain information relevant to answering the "
    "question? Answer Yes or No.")
CRITIC_SUPPORT = (
    "How well does the reference passage support your answer? Reply with one digit: 1 = fully supported, "
    "2 = partially supported, 3 = not supported or contradicted.")
CRITIC_UTILITY = (
    "Rate how useful and correct your answer is, from 1 (useless) to 5 (complete and correct). Reply with one digit.")

YES_NO = ("Yes", "No")
DIGITS = ("1", "2", "3", "4", "5")


@dataclass
class Candidate:
    """One generation for one passage (or without a passage) and its critique."""

    text: str  # the raw completion the generator returned for `prompt`, byte for byte (what DPO pairs use)
    answer: str  # the answer alone, reflection tokens stripped (plus `completion` once completed)
    letter: str | None
    critique: Critique
    prompt: str
    hit: Hit | None = None
    completed: bool = False  # the letter came from the answer-cue step, not from the free text
    completion: str = ""  # what the answer-cue step appended ("\nAnswer: B"): scored, never sampled
    probs: dict[str, float] = field(default_factory=dict)  # the critique's token probabilities (either mode)


@dataclass
class RagAnswer:
    """The answer to one question: all candidates, the retrieval decision and the voted letter."""

    question: Question
    retrieved: bool
    p_retrieve: float | None
    hits: list[Hit]
    samples: list[list[Candidate]]  # [sample][passage]
    letters: list[str | None] = field(default_factory=list)  # per sample, score-weighted over passages

    def best(self, sample: int = 0) -> Candidate:
        """The highest-scoring candidate of a sample that agrees with that sample's letter."""
        cands = self.samples[sample]
        letter = self.letters[sample]
        pool = [c for c in cands if c.letter == letter] or cands
        return max(pool, key=lambda c: c.critique.score)

    def generations(self) -> list[Generation]:
        out = []
        for s in range(len(self.samples)):
            best = self.best(s)
            out.append(Generation(
                question_id=self.question.id, lang=self.question.lang, sample=s, text=best.text,
                letter=self.letters[s], critique=best.critique,
                passage_ids=tuple(h.passage.id for h in self.hits), prompt=best.prompt, completed=best.completed,
                completion=best.completion))
        return out


def has_reflection_tokens(generator: Generator) -> bool:
    """Native mode needs every reflection token as a single token of the vocabulary."""
    return generator.has_tokens(selfrag.REFLECTION_TOKENS)


class SelfRag:
    """Retriever + generator + critic; `answer()` does the whole Self-RAG pass for one question."""

    def __init__(self, generator: Generator, retriever=None, cfg: SelfRagConfig | None = None,
                 gen_cfg: GenerateConfig | None = None, critique_without_passage: bool = True,
                 critique_agreeing: bool = True):
        """`critique_without_passage=False` skips the verbalised utility question for answers given without a
        passage: a greedy zero-shot evaluation has one answer per sample, so no score can change its letter.
        `critique_agreeing=False` skips the whole verbalised critique of a sample whose passages all gave the
        same letter (after the answer-cue step): the score-weighted vote over its passages cannot change it,
        and a greedy evaluation grades letters only. Such candidates keep an empty critique (score 0)."""
        self.critique_without_passage = critique_without_passage
        self.critique_agreeing = critique_agreeing
        self.gen = generator
        self.retriever = retriever
        self.cfg = cfg or SelfRagConfig()
        self.gen_cfg = gen_cfg or GenerateConfig()
        native = has_reflection_tokens(generator)
        mode = self.cfg.critique
        if mode == "native" and not native:
            raise ValueError("selfrag.critique=native but the tokenizer lacks the reflection tokens; "
                             "use critique=auto or verbalised, or a Self-RAG model")
        self.native = native if mode == "auto" else mode == "native"
        self.weights = selfrag.CritiqueWeights(self.cfg.w_rel, self.cfg.w_sup, self.cfg.w_use)
        self.extra_special = [t for t in generator.special_tokens() if t not in selfrag.SPECIAL_TOKENS]

    @property
    def mode(self) -> str:
        return "native" if self.native else "verbalised"

    # ------------------------------------------------------------ prompts

    def prompt(self, instruction: str, hit: Hit | None) -> str:
        passage = hit.passage if hit else None
        if self.native:
            return selfrag.format_prompt(instruction, passage, self.extra_special)
        return self.gen.chat_prompt(self._user_text(instruction, hit))

    def _user_text(self, text: str, hit: Hit | None) -> str:
        """The verbalised user turn: the reference passage (defused) first, then the text."""
        if hit is None:
            return text
        return "Reference passage:\n" + selfrag.format_paragraph(hit.passage, self.extra_special) + "\n\n" + text

    def _critic(self, template: str, **fields: str) -> str:
        return self.gen.chat_prompt(template.format(**fields))

    def _follow_up(self, question: Question, hit: Hit | None, answer: str, template: str) -> str:
        """A critic question as the next turn of the answer's conversation (its passage and instruction)."""
        user = self._user_text(selfrag.question_instruction(question), hit)
        return self.gen.chat_turns([{"role": "user", "content": user}, {"role": "assistant", "content": answer},
                                    {"role": "user", "content": template}])

    # ------------------------------------------------------------ the pass

    def retrieval_decision(self, questions: Sequence[Question]) -> list[tuple[bool, float | None]]:
        if self.cfg.retrieval != "adaptive" or self.retriever is None:
            keep = self.cfg.retrieval == "always" and self.retriever is not None
            return [(keep, None)] * len(questions)
        if self.native:
            prompts = [selfrag.format_prompt(selfrag.question_instruction(q)) for q in questions]
            tables = self.gen.next_token_probs(prompts, [selfrag.RETRIEVAL, selfrag.NO_RETRIEVAL])
        else:
            prompts = [self._critic(CRITIC_RETRIEVAL, question=selfrag.question_text(q)) for q in questions]
            tables = [{selfrag.RETRIEVAL: t["Yes"], selfrag.NO_RETRIEVAL: t["No"]}
                      for t in self.gen.next_token_probs(prompts, YES_NO)]
        return [(selfrag.should_retrieve(t, self.cfg.threshold, "adaptive"), selfrag.retrieval_prob(t))
                for t in tables]

    def answer(self, question: Question, n: int | None = None, seed: int | None = None,
               hits: list[Hit] | None = None, decision: tuple[bool, float | None] | None = None) -> RagAnswer:
        """n samples; each sample answers once per retrieved passage and is scored per option."""
        return self.answer_many([question], n, seed, None if hits is None else [hits],
                                None if decision is None else [decision])[0]

    def answer_many(self, questions: Sequence[Question], n: int | None = None, seed: int | None = None,
                    hits: Sequence[list[Hit] | None] | None = None,
                    decisions: Sequence[tuple[bool, float | None]] | None = None) -> list[RagAnswer]:
        """Several questions (typically one question in every language) answered together: all their
        passages x samples decode in shared padded batches, which is where a CPU gains throughput.

        The seed defaults to one derived from the questions' ids and languages, so a group answers
        the same whether it runs alone, after others, or after a restart.
        """
        questions = list(questions)
        n = self.gen_cfg.n if n is None else n
        decisions = list(decisions) if decisions is not None else self.retrieval_decision(questions)
        found = list(hits) if hits is not None else [None] * len(questions)
        need = [i for i, (retrieve, _) in enumerate(decisions) if retrieve and found[i] is None]
        if need:
            searched = self.retriever.search([selfrag.question_text(questions[i]) for i in need], k=self.cfg.top_k)
            for i, h in zip(need, searched):
                found[i] = h
        slots = [list(found[i] or []) if decisions[i][0] else [] for i in range(len(questions))]
        slots = [s or [None] for s in slots]
        prompts = [[self.prompt(selfrag.question_instruction(q), h) for h in s] for q, s in zip(questions, slots)]
        flat = [p for ps in prompts for p in ps]
        if seed is None:
            seed = unit_seed(self.gen_cfg.seed, *(f"{q.id}\x1f{q.lang}" for q in questions))
        if self.native:
            groups = [selfrag.RELEVANCE_TOKENS, selfrag.SUPPORT_TOKENS, selfrag.UTILITY_TOKENS]
            texts, tables = self.gen.generate_scored(flat, self.gen_cfg, groups, n=n, seed=seed)
        else:
            texts = self.gen.generate(flat, self.gen_cfg, n=n, seed=seed)
        per_question, start = [], 0
        for q, s, ps, (_, p_ret) in zip(questions, slots, prompts, decisions):
            q_tables = tables[start:start + len(ps)] if self.native else None  # verbalised: scored below
            per_question.append(self._candidates(q, s, ps, texts[start:start + len(ps)], q_tables, p_ret, n))
            start += len(ps)
        if self.cfg.complete_answer:
            self._complete_letters([(q, c) for q, samples in zip(questions, per_question)
                                    for cands in samples for c in cands if c.letter is None and q.options])
        if not self.native:
            for q, s, samples, (_, p_ret) in zip(questions, slots, per_question, decisions):
                if self.critique_agreeing or any(len({c.letter for c in cands}) > 1 for cands in samples):
                    texts_by_slot = [[samples[k][i].text for k in range(n)] for i in range(len(s))]
                    for i, row in enumerate(self._verbalised_tables(q, s, texts_by_slot)):
                        for k, table in enumerate(row):
                            _score(samples[k][i], table, p_ret, self.weights)
        return [_vote(q, samples, [h for h in s if h is not None], p_ret)
                for q, samples, s, (_, p_ret) in zip(questions, per_question, slots, decisions)]

    def _candidates(self, question: Question, slots: list[Hit | None], prompts: list[str], texts: list[list[str]],
                    tables: list[list[dict[str, float]]] | None, p_ret: float | None, n: int) -> list[list[Candidate]]:
        """Extract each (passage, sample) output's letter and score it from `tables` (None: not yet critiqued,
        an empty table); [sample][passage]."""
        samples: list[list[Candidate]] = [[] for _ in range(n)]
        for i, hit in enumerate(slots):
            for s in range(n):
                parsed = selfrag.parse_output(texts[i][s])
                letter = selfrag.extract_choice(parsed.answer, question.lang, question.options) if question.options else None
                cand = Candidate(texts[i][s], parsed.answer, letter, Critique(), prompts[i], hit)
                _score(cand, tables[i][s] if tables else {}, p_ret, self.weights)
                samples[s].append(cand)
        return samples

    def _complete_letters(self, pending: list[tuple[Question, Candidate]]) -> None:
        """Outputs that name no option (often cut off mid-explanation) get one more step, as in two-stage
        chain-of-thought evaluation: the language's answer cue is appended and the option letter the
        model finds most probable next is taken. The model did not sample that cue and letter as its
        completion of the prompt, so `text` (what DPO pairs use) stays the raw completion; the appended
        part goes to `completion` (and `answer`, which shows what was voted on), and `completed` marks
        it. The extractor itself never guesses."""
        if not pending:
            return
        letters = sorted({letter for q, _ in pending for letter in q.options})
        # "A" and " A" are both ways to write the letter after the cue; the spaced form counts only where it
        # is one token (next_token_probs reads first tokens, and a lone space token is not a letter)
        variants = [v for letter in letters for v in (letter, " " + letter) if self.gen.is_single_token(v)]
        prompts = [c.prompt + c.answer.rstrip() + "\n" + text_for(q.lang).answer_cue for q, c in pending]
        tables = self.gen.next_token_probs(prompts, variants)
        for (q, c), table in zip(pending, tables):
            letter = max(q.options, key=lambda k: table.get(k, 0.0) + table.get(" " + k, 0.0))
            c.completion = f"\n{text_for(q.lang).answer_cue} {letter}"
            c.answer = (c.answer.rstrip() + c.completion).strip()
            c.letter, c.completed = letter, True

    # ------------------------------------------------------------ critique

    def _verbalised_tables(self, question: Question, slots: list[Hit | None],
                           texts: list[list[str]]) -> list[list[dict[str, float]]]:
        """Relevance once per passage; support per (passage, answer); utility per answer."""
        qtext = selfrag.question_text(question)
        rel_tables: list[dict[str, float]] = [{} for _ in slots]
        with_passage = [i for i, h in enumerate(slots) if h is not None]
        if with_passage:
            rel_prompts = [self.gen.chat_prompt(self._user_text(CRITIC_RELEVANCE.format(question=qtext), slots[i]))
                           for i in with_passage]
            for i, t in zip(with_passage, self.gen.next_token_probs(rel_prompts, YES_NO)):
                rel_tables[i] = {selfrag.RELEVANT: t["Yes"], selfrag.IRRELEVANT: t["No"]}
        flat = [(i, s, selfrag.parse_output(texts[i][s]).answer) for i in range(len(slots)) for s in range(len(texts[i]))]
        sup_idx = [k for k, (i, _, _) in enumerate(flat) if slots[i] is not None]
        sup_prompts = [self._follow_up(question, slots[flat[k][0]], flat[k][2], CRITIC_SUPPORT) for k in sup_idx]
        sup = dict(zip(sup_idx, self.gen.next_token_probs(sup_prompts, DIGITS[:3]))) if sup_idx else {}
        use_idx = [k for k, (i, _, _) in enumerate(flat) if self.critique_without_passage or slots[i] is not None]
        use_prompts = [self._follow_up(question, slots[flat[k][0]], flat[k][2], CRITIC_UTILITY) for k in use_idx]
        use = dict(zip(use_idx, self.gen.next_token_probs(use_prompts, DIGITS))) if use_idx else {}
        tables: list[list[dict[str, float]]] = [[{} for _ in texts[i]] for i in range(len(slots))]
        for k, (i, s, _) in enumerate(flat):
            table = dict(rel_tables[i])
            if k in sup:
                table.update(zip(selfrag.SUPPORT_TOKENS, (sup[k][d] for d in DIGITS[:3])))
            if k in use:
                table.update(zip(selfrag.UTILITY_TOKENS, (use[k][d] for d in DIGITS)))
            tables[i][s] = table
        return tables


def _vote(question: Question, samples: list[list[Candidate]], hits: list[Hit], p_ret: float | None) -> RagAnswer:
    """Per sample, the score-weighted vote over its passages' letters."""
    letters = [selfrag.best_option(selfrag.aggregate_by_option((c.letter, _positive(c.critique.score))
                                                               for c in cands)) for cands in samples]
    # A tie between options keeps the best-scoring candidate's letter rather than dropping it.
    for s, cands in enumerate(samples):
        if letters[s] is None and any(c.letter for c in cands):
            letters[s] = max((c for c in cands if c.letter), key=lambda c: c.critique.score).letter
    return RagAnswer(question, bool(hits), p_ret, hits, samples, letters)


def _score(cand: Candidate, table: dict[str, float], p_ret: float | None, weights: selfrag.CritiqueWeights) -> None:
    """Set a candidate's critique from its probability table (plus the question's retrieval probability)."""
    probs = dict(table)
    if p_ret is not None:
        probs[selfrag.RETRIEVAL], probs[selfrag.NO_RETRIEVAL] = p_ret, 1.0 - p_ret
    cand.probs, cand.critique = probs, selfrag.score_critique(probs, weights)


def _positive(score: float) -> float:
    """Passage scores can be negative (utility); option totals use a floor so every answer counts."""
    return max(score, 1e-3)
