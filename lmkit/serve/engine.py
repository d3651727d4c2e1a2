"""The batching engine behind `lmkit serve`: concurrent requests decoded together with the KV cache.

It knows nothing of HTTP. A caller submits sequences (token ids and a GenerationConfig each) with a callback;
one worker thread owns the model and decodes them with lmkit.generate.DecodeSession, which holds each
sequence's decoding state; the engine only decides who joins which session when. Two schedulers:

- "continuous" (the default): one session of `max_batch` slots whose KV cache is allocated once, at start. A
  waiting sequence takes a free slot at the next step, its prompt is fed in chunks of at most `prefill_chunk`
  tokens between the others' decoding steps, and a finished one leaves at once, freeing its slot. Requests
  arriving one by one thus decode in one batch, and the time to a first token is one step plus the prompt.
- "static" (kept to measure against): waiting sequences form a batch of up to `max_batch` once none has arrived
  for `gather_seconds` (so that requests sent together decode together), the first has waited
  `max_gather_seconds`, or a batch is full; a running batch admits nobody, and batches formed while others
  run are stepped in turn. Each batch allocates its own KV cache.

Each sequence has its own torch.Generator seeded with its config's seed and its own cache slot and positions,
so its result equals `lmkit.generate.generate` for the same prompt and config, whatever else is decoded with
it and whenever it arrived (up to floating-point rounding in batched matrix products).

Callbacks are called on the worker thread and must return quickly (e.g. hand the event to an asyncio loop):
the worker never waits for a reader, so a slow client cannot stall the others. A cancelled ticket's sequences
leave at the next step.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from lmkit.generate import DecodeSession, GenerationConfig, StepOutput
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
            if sequence.config.temperature > 0 and sequence.config.seed is None:
                raise ValueError("each sampled sequence needs a seed, so that its result can be repeated")
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
class _Waiting:
    """A sequence not decoding yet: its ticket, its index there, and when it arrived (on the engine's clock)."""

    ticket: Ticket
    index: int
    request: SequenceRequest
    arrived: float


Scheduler = Literal["continuous", "static"]
TOKEN_RATE_SECONDS = 5.0  # /health's tokens per second are counted over this window


class BatchEngine:
    """Decodes submitted sequences in batches on one worker thread; `start()` it, `submit()`, then `stop()`."""

    def __init__(
        self,
        model: TransformerLM,
        tokenizer: Tokenizer,
        max_batch: int = 8,
        max_queue: int = 256,
        prefill_chunk: int = 256,
        scheduler: Scheduler = "continuous",
        gather_seconds: float = 0.02,
        max_gather_seconds: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch < 1 or prefill_chunk < 1:
            raise ValueError(f"max_batch and prefill_chunk must be at least 1, got {max_batch} and {prefill_chunk}")
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.max_queue, self.prefill_chunk = max_batch, max_queue, prefill_chunk
        self.scheduler = scheduler
        self.gather_seconds, self.max_gather_seconds = gather_seconds, max_gather_seconds
        self.clock = clock  # seconds, for gathering arrivals and the token rate; a test can drive its own
        self._waiting: list[_Waiting] = []
        self._sessions: list[DecodeSession] = []
        if scheduler == "continuous":
            self._sessions.append(self._new_session(max_batch))
        self._running = 0  # sequences in the sessions, as of the worker's last change
        self._generated: deque[tuple[float, int]] = deque()  # (when, tokens) per step, for the token rate
        self._wakeup = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def _new_session(self, slots: int) -> DecodeSession:
        return DecodeSession(self.model, self.tokenizer, slots, self.prefill_chunk)

    @property
    def load(self) -> dict[str, float]:
        """Sequences decoding ("running", one cache slot each) and waiting for one ("waiting"), the slots there
        are ("max_batch"), and tokens generated per second over the last few seconds ("tokens_per_second")."""
        with self._wakeup:
            self._forget_old_steps()
            rate = sum(tokens for _, tokens in self._generated) / TOKEN_RATE_SECONDS
            return {
                "running": self._running,
                "waiting": len(self._waiting),
                "max_batch": self.max_batch,
                "tokens_per_second": round(rate, 1),
            }

    def has_room(self, sequences: int) -> bool:
        """Whether `sequences` more fit under max_queue, with those being decoded and waiting."""
        with self._wakeup:
            return self._running + len(self._waiting) + sequences <= self.max_queue

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
        with self._wakeup:
            now = self.clock()
            self._waiting += [_Waiting(ticket, index, request, now) for index, request in enumerate(ticket.sequences)]
            self._wakeup.notify()
        return ticket

    # --- the worker ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wakeup:
                while not self._stopping and not self._running and not self._waiting:
                    self._wakeup.wait()
                if self._stopping:
                    return
                if self.scheduler == "continuous":
                    self._admit(self._sessions[0])
                else:
                    if not self._running:  # idle: wait for the sequences sent together with the first one
                        while not (self._stopping or self._gathered()):
                            self._wakeup.wait(max(0.0, self._gather_deadline() - self.clock()))
                    if self._gathered():
                        self._form_batches()
                sessions = list(self._sessions)
            for session in sessions:
                if session.sequences:
                    self._step(session)

    def _admit(self, session: DecodeSession) -> None:
        """Give waiting sequences the session's free slots, first come first served (cancelled ones leave)."""
        while self._waiting and session.free_slots:
            waiting = self._waiting.pop(0)
            if not waiting.ticket.cancelled:
                self._start(session, waiting)

    def _start(self, session: DecodeSession, waiting: _Waiting) -> None:
        """Give one waiting sequence a slot of `session`; Failed for its ticket if the session refuses it."""
        request = waiting.request
        try:
            session.add(request.prompt_ids, request.config, tag=(waiting.ticket, waiting.index))
        except ValueError as err:  # e.g. a prompt past the context: the HTTP layer should have refused it
            waiting.ticket.cancel()
            self._fail([waiting.ticket], err)
            return
        self._running += 1

    def _gather_deadline(self) -> float:
        """When the waiting sequences stop waiting for more: `gather_seconds` after the latest arrival, but
        no later than `max_gather_seconds` after the first."""
        first, latest = self._waiting[0].arrived, self._waiting[-1].arrived
        return min(first + self.max_gather_seconds, latest + self.gather_seconds)

    def _gathered(self) -> bool:
        """Whether the waiting sequences make a batch now: a full one, or no more are expected to join."""
        if not self._waiting:
            return False
        return len(self._waiting) >= self.max_batch or self.clock() >= self._gather_deadline()

    def _form_batches(self) -> None:
        """Turn the waiting sequences into sessions of at most max_batch (cancelled ones are left out)."""
        waiting = [entry for entry in self._waiting if not entry.ticket.cancelled]
        self._waiting = []
        for start in range(0, len(waiting), self.max_batch):
            batch = waiting[start : start + self.max_batch]
            try:
                session = self._new_session(len(batch))
            except Exception as err:  # e.g. no device memory for its KV cache: fail these, serve the others
                self._fail([entry.ticket for entry in batch], err)
                continue
            for entry in batch:
                self._start(session, entry)
            self._sessions.append(session)

    @staticmethod
    def _fail(tickets: Sequence[Ticket], err: Exception) -> None:
        """Send Failed to each of `tickets`, once each."""
        for ticket in {id(ticket): ticket for ticket in tickets}.values():
            ticket.emit(Failed(f"{type(err).__name__}: {err}"))

    def _step(self, session: DecodeSession) -> None:
        """Run one step of `session`, hand out the events, and let finished and cancelled sequences go."""
        try:
            outputs = session.step()
        except Exception as err:  # the server must keep serving: fail this session's sequences, keep going
            self._fail([sequence.tag[0] for sequence in session.sequences], err)
            for sequence in list(session.sequences):
                session.remove(sequence)
            outputs = []
        for output in outputs:
            ticket, index = output.sequence.tag
            if not ticket.cancelled:
                self._emit(ticket, index, output)
        for sequence in list(session.sequences):
            if sequence.tag[0].cancelled:
                session.remove(sequence)
        with self._wakeup:
            self._running = sum(len(each.sequences) for each in self._sessions)
            if self.scheduler == "static":
                self._sessions = [each for each in self._sessions if each.sequences]
            self._generated.append((self.clock(), len(outputs)))
            self._forget_old_steps()

    def _forget_old_steps(self) -> None:
        """Drop the steps older than the token-rate window."""
        cutoff = self.clock() - TOKEN_RATE_SECONDS
        while self._generated and self._generated[0][0] < cutoff:
            self._generated.popleft()

    @staticmethod
    def _emit(ticket: Ticket, index: int, output: StepOutput) -> None:
        """Send a sequence's new text, and Finished when it is done."""
        if output.text:
            ticket.emit(TextPiece(index, output.text))
        if output.finished:
            continuation = output.sequence.continuation
            reason = "stop" if continuation.stopped else "length"
            ticket.emit(Finished(index, continuation.text, continuation.ids, reason))
