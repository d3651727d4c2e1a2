"""Multiple-choice evaluation (HellaSwag-style): which continuation of a context does the model find likeliest?

A question file is JSON Lines, one question a line: `{"context": str, "choices": [str, ...], "label": int}`
(blank lines are skipped). For each choice the model scores the log-likelihood of the choice's tokens
given the context's: context and choice are encoded separately and joined (as lm-evaluation-harness does),
preceded by the tokenizer's first special token (usually `<|endoftext|>`) when it has one. Two predictions:
- by the summed log-likelihood of the choice (favours short choices: every token costs probability);
- by the length-normalised log-likelihood: the sum divided by the choice's length in characters
  (lm-evaluation-harness's `acc_norm` for HellaSwag).
When context + choice are longer than the model's context, the context loses its first tokens.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmkit.device import autocast
from lmkit.errors import InputError
from lmkit.evaluation.perplexity import start_ids
from lmkit.fileio import parse_json
from lmkit.model import TransformerLM
from lmkit.progress import progress_bar
from lmkit.tokenizer import Tokenizer
from lmkit.training.loss import cross_entropy


@dataclass(frozen=True)
class Question:
    """One multiple-choice question: the context, the candidate continuations and the index of the right one."""

    context: str
    choices: list[str]
    label: int
    line: int = 0  # where it was read from (for error messages)


@dataclass(frozen=True)
class ChoiceScore:
    """A choice's log-likelihood given the context (natural log), summed and per character."""

    loglik: float
    tokens: int
    characters: int

    @property
    def loglik_norm(self) -> float:
        """The summed log-likelihood divided by the choice's length in characters."""
        return self.loglik / max(self.characters, 1)


def _question(obj: object, where: str, line: int) -> Question:
    """Validate one parsed line; InputError naming `where` (file and line) and the problem."""
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object with context, choices and label")
    unknown = set(obj) - {"context", "choices", "label"}
    if unknown:
        raise InputError(f"{where}: unknown key {sorted(unknown)[0]!r}; a question has context, choices and label")
    context, choices, label = obj.get("context"), obj.get("choices"), obj.get("label")
    if not isinstance(context, str):
        raise InputError(f"{where}: context must be a string")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise InputError(f"{where}: choices must be a list of at least two non-empty strings")
    if not isinstance(label, int) or isinstance(label, bool):
        raise InputError(f"{where}: label must be an integer index into choices")
    if not 0 <= label < len(choices):
        raise InputError(f"{where}: label {label} is out of range for {len(choices)} choices (0 … {len(choices) - 1})")
    return Question(context, choices, label, line)


def read_questions(path: str | os.PathLike) -> list[Question]:
    """The questions of a JSON Lines file; InputError naming the line of the first malformed one."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"choices file {path} does not exist (or is not a file)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError(f"choices file {path} is not UTF-8 text") from None
    questions = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        obj = parse_json(line, where)
        questions.append(_question(obj, where, number))
    if not questions:
        raise InputError(f"choices file {path} holds no questions")
    return questions


@torch.no_grad()
def score_question(
    model: TransformerLM, tokenizer: Tokenizer, question: Question, autocast_dtype: torch.dtype | None = None
) -> list[ChoiceScore]:
    """Each choice's log-likelihood given the question's context, from one batch of all its choices."""
    limit = model.config.context_length + 1  # a row of context + choice ids, as many as one forward reads + 1
    context_ids = np.concatenate([start_ids(tokenizer), tokenizer.encode_array(question.context)])
    if len(context_ids) == 0:
        raise InputError(
            f"the question on line {question.line} has an empty context, and the tokenizer has no special token "
            "to start from; give it a context"
        )
    rows, spans = [], []
    for choice in question.choices:
        choice_ids = tokenizer.encode_array(choice)
        if len(choice_ids) >= limit:
            raise InputError(
                f"the question on line {question.line} has a choice of {len(choice_ids)} tokens, "
                f"more than the model's context of {model.config.context_length}"
            )
        row = np.concatenate([context_ids, choice_ids])[-limit:].astype(np.int64)
        rows.append(row)
        spans.append(len(choice_ids))
    width = max(map(len, rows))
    # Right padding: under the causal mask the padded tail changes nothing before it.
    batch = torch.zeros((len(rows), width), dtype=torch.int64)
    for i, row in enumerate(rows):
        batch[i, : len(row)] = torch.from_numpy(row)
    device = model.lm_head.weight.device
    batch = batch.to(device)
    with autocast(device, autocast_dtype):
        logits = model(batch[:, :-1])
    scores = []
    for i, (row, span, choice) in enumerate(zip(rows, spans, question.choices, strict=True)):
        first = len(row) - span  # the position of the choice's first token
        nats = cross_entropy(logits[i, first - 1 : len(row) - 1], batch[i, first : len(row)]).item() * span
        scores.append(ChoiceScore(loglik=-nats, tokens=span, characters=len(choice)))
    return scores


def evaluate_choices(
    model: TransformerLM,
    tokenizer: Tokenizer,
    questions: list[Question],
    *,
    autocast_dtype: torch.dtype | None = None,
    show_progress: bool = False,
) -> dict[str, object]:
    """Score every question; return the count, both accuracies (by summed and by normalised log-likelihood)
    and the time taken."""
    model.eval()
    right = right_norm = 0
    start = time.perf_counter()
    with progress_bar("Scoring", len(questions), "questions", enabled=show_progress) as bar:
        for question in questions:
            scores = score_question(model, tokenizer, question, autocast_dtype)
            right += int(np.argmax([s.loglik for s in scores])) == question.label
            right_norm += int(np.argmax([s.loglik_norm for s in scores])) == question.label
            bar.advance(1)
    seconds = time.perf_counter() - start
    return {
        "questions": len(questions),
        "accuracy": right / len(questions),
        "accuracy_norm": right_norm / len(questions),
        "chance": float(np.mean([1 / len(q.choices) for q in questions])),
        "seconds": round(seconds, 3),
    }
