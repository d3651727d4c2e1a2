"""The batching engine behind `lmkit serve`: concurrent requests decoded together with the KV cache.

It knows nothing of HTTP. A caller submits sequences (token ids and a GenerationConfig each) with a callback;
one worker thread owns the model and decodes. Waiting sequences form a batch of up to `max_batch` rows, decoded
by lmkit.generate.BatchDecoder, once none has arrived for `gather_seconds` (so that requests sent together are
decoded together), the first has waited `max_gather_seconds`, or a batch is full. Batches formed while others
run are stepped in turn, so a new request starts at once instead of waiting for a long one to finish.

Each row has its own torch.Generator seeded with its config's seed and is sampled alone, exactly as
`lmkit.generate.generate` samples a single prompt, and a row's logits depend only on its own tokens (see
BatchDecoder): a sequence's result equals the library's for the same prompt and config, whatever else is in
the batch (up to floating-point rounding in batched matrix products).

Callbacks are called on the worker thread and must return quickly (e.g. hand the event to an asyncio loop):
the worker never waits for a reader, so a slow client cannot stall the others. A cancelled ticket's rows are
dropped from their batch at the next step; so are finished rows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lmkit.generate import (
    END_OF_TEXT,
    BatchDecoder,
    Continuation,
    GenerationConfig,
    next_token_probs,
    sample_next_token,
)
from lmkit.model import TransformerLM
from lmkit.tokenizer import Tokenizer


@dataclass(frozen=True)
class TextPiece:
    """New final text of sequence `index` (whole characters; held back while it could begin a stop string)."""

    index: int
    text: str


@dataclass(frozen=True)
class Finished:
    """Sequence `index` is complete: its whole text, its new token ids, and why it ended."""

    index: int
    text: str
    ids: list[int]
    finish_reason: str  # "stop" (end of text or a stop string) or "length" (max_new_tokens)


@dataclass(frozen=True)
class Failed:
    """Decoding failed (e.g. out of device memory); no more events come for this ticket."""

    message: str


Event = TextPiece | Finished | Failed


@dataclass(frozen=True)
class SequenceRequest:
    """One sequence to decode: its prompt ids (1 … context_length of them) and how to sample."""

    prompt_ids: list[int]
    config: GenerationConfig


class Ticket:
    """A submitted group of sequences; `cancel()` drops those not finished yet (e.g. the client went away)."""

    def __init__(self, sequences: Sequence[SequenceRequest], on_event: Callable[[Event], None]) -> None:
        for sequence in sequences:
            if sequence.config.seed is None:
                raise ValueError("each sequence needs a seed, so that its result can be repeated")
        self.sequences = list(sequences)
        self.on_event = on_event
        self.cancelled = False

    def cancel(self) -> None:
        """Drop this ticket's unfinished sequences at the worker's next step."""
        self.cancelled = True

    def emit(self, event: Event) -> None:
        """Hand `event` to the callback; a callback that fails (its reader is gone) cancels the ticket."""
        try:
            self.on_event(event)
        except Exception:
            self.cancel()


@dataclass
class _Row:
    """A sequence being decoded: its ticket, its index there, its sampler and its text so far."""

    ticket: Ticket
    index: int
    config: GenerationConfig
    generator: torch.Generator
    text: Continuation
    arrived: float  # on the engine's clock


class _RunningBatch:
    """Rows decoded together by one BatchDecoder."""

    def __init__(self, model: TransformerLM, rows: list[_Row], prompts: list[list[int]]) -> None:
        self.rows = rows
        self.decoder = BatchDecoder(model, prompts, max(row.config.max_new_tokens for row in rows))


class BatchEngine:
    """Decodes submitted sequences in batches on one worker thread; `start()` it, `submit()`, then `stop()`."""

    def __init__(
        self,
        model: TransformerLM,
        tokenizer: Tokenizer,
        max_batch: int = 8,
        gather_seconds: float = 0.02,
        max_gather_seconds: float = 0.1,
        max_held: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.max_held = max_held
        self.clock = clock  # seconds, for gathering arrivals; a test can drive its own
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.gather_seconds, self.max_gather_seconds = max_batch, gather_seconds, max_gather_seconds
        self._waiting: list[tuple[_Row, list[int]]] = []
        self._batches: list[_RunningBatch] = []
        self._wakeup = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def load(self) -> dict[str, int]:
        """Sequences being decoded ("running") and waiting for a batch ("waiting")."""
        with self._wakeup:
            running = sum(len(batch.rows) for batch in self._batches)
            return {"running": running, "waiting": len(self._waiting)}

    def has_room(self, sequences: int) -> bool:
        """Whether `sequences` more fit under max_held, with those being decoded and waiting."""
        load = self.load
        return load["running"] + load["waiting"] + sequences <= self.max_held

    def start(self) -> None:
        """Start the worker thread."""
        self._thread = threading.Thread(target=self._run, name="lmkit-serve-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the worker after its current step; unfinished sequences get no more events."""
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()
        if self._thread is not None:
            self._thread.join()

    def submit(self, sequences: Sequence[SequenceRequest], on_event: Callable[[Event], None]) -> Ticket:
        """Queue sequences for decoding; `on_event` gets their TextPiece, Finished (or Failed) events."""
        ticket = Ticket(sequences, on_event)
        device = self.model.lm_head.weight.device
        with self._wakeup:
            for index, sequence in enumerate(ticket.sequences):
                config = sequence.config
                row = _Row(
                    ticket=ticket,
                    index=index,
                    config=config,
                    generator=torch.Generator(device=device).manual_seed(config.seed),
                    text=Continuation(self.tokenizer.vocab, (END_OF_TEXT, *config.stop), config.max_new_tokens),
                    arrived=self.clock(),
                )
                self._waiting.append((row, sequence.prompt_ids))
            self._wakeup.notify()
        return ticket

    # --- the worker ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wakeup:
                while not self._stopping and not self._batches and not self._waiting:
                    self._wakeup.wait()
                if self._stopping:
                    return
                if not self._batches:  # idle: wait for the sequences sent together with the first one
                    while not (self._stopping or self._gathered()):
                        self._wakeup.wait(max(0.0, self._gather_deadline() - self.clock()))
                if self._gathered():
                    self._form_batches()
                running = list(self._batches)
            for batch in running:
                self._step(batch)

    def _gather_deadline(self) -> float:
        """When the waiting sequences stop waiting for more: `gather_seconds` after the latest arrival, but
        no later than `max_gather_seconds` after the first."""
        first, latest = self._waiting[0][0].arrived, self._waiting[-1][0].arrived
        return min(first + self.max_gather_seconds, latest + self.gather_seconds)

    def _gathered(self) -> bool:
        """Whether the waiting sequences make a batch now: a full one, or no more are expected to join."""
        if not self._waiting:
            return False
        return len(self._waiting) >= self.max_batch or self.clock() >= self._gather_deadline()

    def _form_batches(self) -> None:
        """Turn the waiting sequences into batches of at most max_batch rows (cancelled ones are left out)."""
        waiting = [(row, prompt) for row, prompt in self._waiting if not row.ticket.cancelled]
        self._waiting = []
        for start in range(0, len(waiting), self.max_batch):
            rows, prompts = zip(*waiting[start : start + self.max_batch], strict=True)
            try:
                self._batches.append(_RunningBatch(self.model, list(rows), list(prompts)))
            except Exception as err:  # e.g. no device memory for its KV cache: fail these, serve the others
                self._fail(rows, err)

    @staticmethod
    def _fail(rows: Sequence[_Row], err: Exception) -> None:
        """Send Failed to the tickets of `rows`, once each."""
        for ticket in {id(row.ticket): row.ticket for row in rows}.values():
            ticket.emit(Failed(f"{type(err).__name__}: {err}"))

    def _step(self, batch: _RunningBatch) -> None:
        """Decode one position of `batch`, hand out the events, drop finished and cancelled rows."""
        try:
            tokens, is_new = batch.decoder.step(lambda logits, new: self._pick(batch, logits, new))
        except Exception as err:  # the server must keep serving the other batches
            with self._wakeup:
                self._batches.remove(batch)
            self._fail(batch.rows, err)
            return
        for row, token, new in zip(batch.rows, tokens.tolist(), is_new.tolist(), strict=True):
            if new and not row.ticket.cancelled:
                self._advance(row, token)
        keep = [not (row.text.done or row.ticket.cancelled) for row in batch.rows]
        # The batch list and its rows change under the lock: `load` (GET /health) reads them from other threads.
        with self._wakeup:
            batch.rows = [row for row, wanted in zip(batch.rows, keep, strict=True) if wanted]
            batch.decoder.drop(keep)
            if batch.decoder.done:
                self._batches.remove(batch)

    def _pick(self, batch: _RunningBatch, logits: Tensor, is_new: Tensor) -> Tensor:
        """Sample each row that needs a new token with its own settings and generator.

        Rows with the same settings share one computation of their distributions (each row's is computed
        independently of the others'); each row then draws alone from its own generator, as the library does.
        """
        # Only ids the tokenizer can decode: a model's vocabulary may be padded past the tokenizer's.
        logits = logits[:, : self.tokenizer.vocab_size]
        picked = torch.zeros(len(batch.rows), dtype=torch.long, device=logits.device)
        groups: dict[tuple[float, int | None, float], list[int]] = {}
        for position, (row, new) in enumerate(zip(batch.rows, is_new.tolist(), strict=True)):
            if new:
                config = row.config
                groups.setdefault((config.temperature, config.top_k, config.top_p), []).append(position)
        for (temperature, top_k, top_p), positions in groups.items():
            index = torch.tensor(positions, device=logits.device)
            if temperature == 0:
                picked[index] = sample_next_token(logits[index], 0)
                continue
            probs = next_token_probs(logits[index], temperature, top_k, top_p)
            for position, row_probs in zip(positions, probs, strict=True):
                generator = batch.rows[position].generator
                picked[position] = torch.multinomial(row_probs[None], 1, generator=generator)[0, 0]
        return picked

    @staticmethod
    def _advance(row: _Row, token: int) -> None:
        """Give a row its new token and send the text it released; when it is done, send Finished."""
        if piece := row.text.add(token):
            row.ticket.emit(TextPiece(row.index, piece))
        if row.text.done:
            if piece := row.text.finish():
                row.ticket.emit(TextPiece(row.index, piece))
            reason = "stop" if row.text.stopped else "length"
            row.ticket.emit(Finished(row.index, row.text.text, row.text.ids, reason))
