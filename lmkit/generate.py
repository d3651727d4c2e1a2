"""Sampling text from a trained model: temperature, top-k, top-p, stop strings, batches, and a KV cache.

    from lmkit.generate import generate, load_model_and_tokenizer, stream

    model, tokenizer = load_model_and_tokenizer("runs/tinystories/best.pt")
    out = generate(model, tokenizer, "Once upon a time", max_new_tokens=100, temperature=0.8, seed=1)
    out.text, out.ids                                   # the continuation and its token ids
    for piece in stream(model, tokenizer, "Once upon a time", temperature=0):
        print(piece, end="", flush=True)               # whole characters, as they are sampled

How the next token is chosen: logits over the tokenizer's ids are divided by the temperature (0: argmax,
no randomness); top-k keeps the k largest; top-p keeps, of what is left, the smallest set of most likely
tokens whose probabilities sum to at least p (always at least the most likely one); the rest is
renormalised and one token drawn with a torch.Generator seeded by `seed`.

The KV cache: the prompt is fed once, then every new token alone, attending to the cached keys and values
of all earlier positions. A prompt starts with the tokenizer's BOS token when it adds one (Tokenizer.encode_prompt,
as Llama 3's tokenizer.json does); one longer than the model's context keeps its last tokens.
When the cache is full (context_length positions) the window slides: the cache is emptied and refilled
with the last `context_length // 2` tokens (the newest included), which start again at position 0; then
generation goes on one token at a time. So every token is predicted from between context_length // 2 and
context_length preceding tokens, and a slide costs one forward pass over half a window per
context_length // 2 new tokens, where sliding by one token would cost a full window per token (what
llama.cpp's context shift does, halving the window, for the same reason).

Several prompts run as one batch (a DecodeSession): each has its own slot of the KV cache and its own
positions, prompts are fed first, then all sequences advance one token per step together. Prompt i samples
with seed + i, so each result equals that prompt's alone with its Generation's seed. Each sequence stops at
`<|endoftext|>`, at any `stop` string (the text is cut before it) or after `max_new_tokens` new tokens.
"""

from __future__ import annotations

import codecs
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, overload

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import Tensor

from lmkit.chat import has_chat_tokens
from lmkit.checkpoint import END_OF_TEXT as END_OF_TEXT
from lmkit.checkpoint import load_model_and_tokenizer as load_model_and_tokenizer
from lmkit.errors import InputError, validation_error_message
from lmkit.model import TransformerLM
from lmkit.progress import ProgressBar, progress_bar
from lmkit.tokenizer import Tokenizer


class GenerationConfig(BaseModel):
    """How to sample. Build it with `generation_config(...)` to get InputError for bad values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(default=256, ge=1, description="new tokens per prompt, at most")
    temperature: float = Field(default=0.8, ge=0, allow_inf_nan=False, description="0: greedy (argmax)")
    top_k: int | None = Field(default=None, ge=1, description="sample among the k most likely tokens only")
    top_p: float = Field(default=0.95, gt=0, le=1, description="smallest set of tokens with probability >= p")
    seed: int | None = Field(default=None, ge=0, description="the sampler's seed; None draws a fresh one")
    stop: tuple[str, ...] = Field(default=(), description="strings that end a generation besides <|endoftext|>")

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, stop: tuple[str, ...]) -> tuple[str, ...]:
        if "" in stop:
            raise ValueError("a stop string must not be empty")
        return stop


def generation_config(config: GenerationConfig | None = None, **options: object) -> GenerationConfig:
    """`config` (default: the defaults) with `options` replacing its fields; InputError for a bad value or name."""
    try:
        return GenerationConfig(**{**(config or GenerationConfig()).model_dump(), **options})
    except ValidationError as err:
        raise InputError(f"bad generation option {validation_error_message(err)}") from None


@dataclass(frozen=True)
class Generation:
    """One prompt's continuation.

    `text` is the continuation alone, without the prompt (`prompt + text` is what `lmkit generate` prints),
    cut before a stop string; `ids` are every token sampled, the one that completed a stop string (e.g. the
    `<|endoftext|>` id) included. `prompt_ids` are the tokens the model was given (Tokenizer.encode_prompt: the
    BOS token first if the tokenizer adds one, and at most context_length tokens). `seed` repeats the run; it
    is None for greedy decoding (temperature 0), which has no randomness to repeat.
    """

    prompt: str
    text: str
    ids: list[int]
    stop_reason: Literal["stop", "length"]
    prompt_ids: list[int]
    seed: int | None


# --- choosing the next token -------------------------------------------------------------------------------


def next_token_probs(logits: Tensor, temperature: float, top_k: int | None = None, top_p: float = 1.0) -> Tensor:
    """The distribution the next token is drawn from, for logits (..., V) and temperature > 0.

    Temperature first, then top-k, then top-p over what top-k left, renormalised. top_p = 1 keeps every
    token; otherwise a token is kept when the tokens more likely than it sum to less than p, so the most
    likely one always is.
    """
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        best = torch.topk(logits, top_k, dim=-1)
        logits = torch.full_like(logits, float("-inf")).scatter(-1, best.indices, best.values)
    probs = torch.softmax(logits, dim=-1)
    if top_p >= 1.0:
        return probs
    ranked, order = _sort_descending(probs)
    mass_before = ranked.cumsum(dim=-1) - ranked
    ranked = ranked.masked_fill(mass_before >= top_p, 0.0)
    kept = torch.zeros_like(probs).scatter(-1, order, ranked)
    return kept / kept.sum(dim=-1, keepdim=True)


def _sort_descending(probs: Tensor) -> tuple[Tensor, Tensor]:
    """(values, indices) of `probs` sorted along the last dim, largest first.

    On the CPU numpy's quicksort does it: torch's CPU sort is a stable merge sort, about 6x slower on a 10K
    vocabulary, which made top-p cost a third of a decoding step of a batch. Equal probabilities may come in
    either order, as with torch's sort on other devices.
    """
    if probs.device.type != "cpu":
        return probs.sort(dim=-1, descending=True)
    order = torch.from_numpy(np.argsort(-probs.detach().numpy(), axis=-1))
    return probs.gather(-1, order), order


def sample_next_token(
    logits: Tensor,
    temperature: float,
    top_k: int | None = None,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One token id per row of logits (B, V) -> (B,): argmax at temperature 0, else a draw from next_token_probs."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = next_token_probs(logits, temperature, top_k, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# --- the decoding loop ---------------------------------------------------------------------------------------


class DecodingSequence:
    """One prompt being continued in a DecodeSession: its settings, its sampler, its text so far, and the
    tokens it has still to feed to the model (its prompt at first, then each sampled token).

    `tag` is the caller's (the server keeps its request there); `continuation` holds the text and ids.
    """

    def __init__(
        self,
        prompt_ids: Sequence[int],
        config: GenerationConfig,
        vocab: dict[int, bytes],
        device: torch.device,
        tag: object = None,
    ) -> None:
        if config.temperature > 0 and config.seed is None:
            raise ValueError("a sampled sequence needs a seed, so that its result can be repeated")
        self.prompt_ids = list(prompt_ids)
        self.config, self.tag = config, tag
        self.generator = None
        if config.temperature > 0:
            self.generator = torch.Generator(device=device).manual_seed(config.seed)
        self.continuation = Continuation(vocab, (END_OF_TEXT, *config.stop), config.max_new_tokens)
        self.pending = list(prompt_ids)  # not in the KV cache yet
        self.recent = list(prompt_ids)  # the latest tokens, to refill the window from when it slides
        self.slot = -1
        self.order = 0  # admission order: earlier sequences' prompts are fed first

    @property
    def done(self) -> bool:
        """Ended by end of text or a stop string, or max_new_tokens reached."""
        return self.continuation.done


@dataclass(frozen=True)
class StepOutput:
    """What a DecodeSession step gave one sequence: its new token, the text that became final with it, and
    whether the sequence has finished (it has then left the session)."""

    sequence: DecodingSequence
    token: int
    text: str
    finished: bool


class DecodeSession:
    """Sequences decoded together over one KV cache with a slot per sequence; they join and leave at any step.

    `add` gives a prompt a free slot. Each `step` then feeds what the sequences have not fed yet: first the
    prompts of sequences just added, at most `prefill_chunk` tokens in all (earliest first), so that a long
    prompt delays the others by one chunk's forward pass per step, not by its whole length; then one new token
    for every sequence whose prompt is in, all in one forward pass. A sequence samples its next token once
    its last pending token is fed, with its own torch.Generator seeded by its config's seed, so its result
    depends only on its own prompt and settings, never on what else is in the session or when it joined
    (up to floating-point rounding in batched products). A finished sequence leaves at once, and the last
    slot's sequence moves into its slot, so the sequences decoding together always hold slots 0 … n-1 and
    the cache is read as one block.

    The window slides per sequence as the module docstring says: a sequence whose slot is full starts its
    slot again and refeeds its last context_length // 2 tokens (as one more prefill).
    """

    def __init__(
        self, model: TransformerLM, tokenizer: Tokenizer, slots: int, prefill_chunk: int | None = None
    ) -> None:
        if tokenizer.vocab_size > model.config.vocab_size:
            raise InputError(
                f"the tokenizer has {tokenizer.vocab_size} ids but the model only {model.config.vocab_size}"
            )
        context = model.config.context_length
        self.model, self.tokenizer = model, tokenizer
        self.prefill_chunk = context if prefill_chunk is None else prefill_chunk
        if self.prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be at least 1, got {prefill_chunk}")
        self.sequences: list[DecodingSequence] = []  # sequences[i] holds slot i
        self._cache = model.new_kv_cache(slots)
        self._keep = max(1, context // 2)
        self._admitted = 0

    @property
    def free_slots(self) -> int:
        """Sequences that can still be added."""
        return self._cache.batch_size - len(self.sequences)

    @property
    def cache_bytes(self) -> int:
        """Memory held by the KV cache (keys and values, every slot)."""
        return 2 * self._cache.keys.numel() * self._cache.keys.element_size()

    def add(self, prompt_ids: Sequence[int], config: GenerationConfig, tag: object = None) -> DecodingSequence:
        """Start continuing `prompt_ids` (1 … context_length ids) with `config` (its seed set unless greedy)."""
        if not 0 < len(prompt_ids) <= self.model.config.context_length:
            raise ValueError(f"a prompt needs 1 … {self.model.config.context_length} tokens, got {len(prompt_ids)}")
        if not self.free_slots:
            raise ValueError("no free slot: wait for a sequence to finish")
        device = self.model.lm_head.weight.device
        sequence = DecodingSequence(prompt_ids, config, self.tokenizer.vocab, device, tag)
        sequence.slot, sequence.order = len(self.sequences), self._admitted
        self._admitted += 1
        self._cache.lengths[sequence.slot] = 0
        self.sequences.append(sequence)
        return sequence

    def remove(self, sequence: DecodingSequence) -> None:
        """Stop decoding `sequence` (e.g. its client went away) and free its slot."""
        last = self.sequences.pop()
        if last is not sequence:
            self._cache.move(last.slot, sequence.slot)
            last.slot = sequence.slot
            self.sequences[last.slot] = last
        sequence.slot = -1

    @torch.inference_mode()
    def step(self) -> list[StepOutput]:
        """Feed one prefill chunk and one decoding position (either may be empty); sample, and report each
        sequence that got a token."""
        for sequence in self.sequences:
            if self._cache.lengths[sequence.slot] + len(sequence.pending) > self._cache.max_len:
                self._cache.lengths[sequence.slot] = 0  # the window slides: refill with the latest tokens
                sequence.pending = sequence.recent[-self._keep :]
        prefilling = sorted((s for s in self.sequences if len(s.pending) > 1), key=lambda s: s.order)
        decoding = [s for s in self.sequences if len(s.pending) == 1]
        outputs: list[StepOutput] = []
        if prefilling:
            outputs += self._feed(self._prefill_share(prefilling))
        if decoding:
            outputs += self._feed([(sequence, 1) for sequence in decoding])
        for output in outputs:
            if output.finished:
                self.remove(output.sequence)
        return outputs

    def _prefill_share(self, prefilling: list[DecodingSequence]) -> list[tuple[DecodingSequence, int]]:
        """How many pending tokens each prefilling sequence feeds this step: at most prefill_chunk in all."""
        share, budget = [], self.prefill_chunk
        for sequence in prefilling:
            count = min(len(sequence.pending), budget)
            if count == 0:
                break
            share.append((sequence, count))
            budget -= count
        return share

    def _feed(self, share: list[tuple[DecodingSequence, int]]) -> list[StepOutput]:
        """Feed each sequence its next `count` pending tokens in one forward pass; sample for those done feeding."""
        width = max(count for _, count in share)
        rows = []  # each sequence's next `count` tokens, padded to the width
        for sequence, count in share:
            rows.append(sequence.pending[:count] + [0] * (width - count))
            del sequence.pending[:count]
        ids = torch.tensor(rows, device=self.model.lm_head.weight.device)
        slots = [sequence.slot for sequence, _ in share]
        counts = [count for _, count in share]
        logits = self.model(ids, kv_cache=self._cache, slots=slots, counts=counts, last_only=True)[:, -1]
        ready = [row for row, (sequence, _) in enumerate(share) if not sequence.pending]
        if not ready:
            return []
        sequences = [share[row][0] for row in ready]
        tokens = self._pick(sequences, logits[ready])
        return [self._advance(sequence, token) for sequence, token in zip(sequences, tokens, strict=True)]

    def _pick(self, sequences: list[DecodingSequence], logits: Tensor) -> list[int]:
        """Each sequence's next token, drawn with its own settings and generator.

        Sequences with the same settings share one computation of their distributions (each row's is computed
        independently of the others'); each then draws alone from its own generator, as a lone prompt does.
        """
        # Only ids the tokenizer can decode: a model's vocabulary may be padded past the tokenizer's.
        logits = logits[:, : self.tokenizer.vocab_size]
        groups: dict[tuple[float, int | None, float], list[int]] = {}
        for row, sequence in enumerate(sequences):
            config = sequence.config
            groups.setdefault((config.temperature, config.top_k, config.top_p), []).append(row)
        picked = [0] * len(sequences)
        for (temperature, top_k, top_p), rows in groups.items():
            index = torch.tensor(rows, device=logits.device)
            if temperature == 0:
                for row, token in zip(rows, sample_next_token(logits[index], 0).tolist(), strict=True):
                    picked[row] = token
                continue
            probs = next_token_probs(logits[index], temperature, top_k, top_p)
            for row, row_probs in zip(rows, probs, strict=True):
                picked[row] = int(torch.multinomial(row_probs[None], 1, generator=sequences[row].generator)[0, 0])
        return picked

    def _advance(self, sequence: DecodingSequence, token: int) -> StepOutput:
        """Give `sequence` its new token: it is fed at the next step, and its text grows."""
        sequence.pending.append(token)
        sequence.recent.append(token)
        if len(sequence.recent) > 2 * self.model.config.context_length:
            del sequence.recent[: -self._keep]
        text = sequence.continuation.add(token)
        if sequence.done:
            text += sequence.continuation.finish()
        return StepOutput(sequence, token, text, sequence.done)


class Continuation:
    """One sequence's new tokens turned into text as they come: whole characters only, cut at a stop string.

    Text that could be the start of a stop string is held back until the next tokens settle it.
    """

    def __init__(self, vocab: dict[int, bytes], stops: tuple[str, ...], limit: int) -> None:
        self.ids: list[int] = []
        self.text = ""
        self.stopped = False
        self._released = 0  # characters of `text` already handed out
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._vocab, self._stops, self._limit = vocab, stops, limit

    @property
    def done(self) -> bool:
        """Stopped, or max_new_tokens reached."""
        return self.stopped or len(self.ids) >= self._limit

    def add(self, token_id: int) -> str:
        """Take the next token; return the text that has become final (often "", never a split character)."""
        self.ids.append(token_id)
        self.text += self._decoder.decode(self._vocab[token_id])
        return self._release(final=False)

    def finish(self) -> str:
        """No more tokens: an unfinished character becomes U+FFFD (as Tokenizer.decode does); release the rest."""
        if not self.stopped:
            self.text += self._decoder.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        # A stop string can only start in unreleased text: anything released was no stop string's prefix.
        hits = [i for i in (self.text.find(stop, self._released) for stop in self._stops) if i >= 0]
        if hits:
            self.text, self.stopped = self.text[: min(hits)], True
            end = len(self.text)
        else:
            end = len(self.text) if final else len(self.text) - self._stop_prefix_length()
        piece, self._released = self.text[self._released : end], end
        return piece

    def _stop_prefix_length(self) -> int:
        """The length of the longest end of `text` that begins some stop string."""
        longest = min(len(self.text), max(map(len, self._stops)) - 1)
        for size in range(longest, 0, -1):
            if any(stop.startswith(self.text[-size:]) for stop in self._stops):
                return size
        return 0


class _PromptBatch:
    """Prompts sampled together: `pieces()` runs the loop, `results()` reads the Generations afterwards.

    Prompt i samples with seed + i, so that each Generation's seed repeats it alone. `add_bos` False leaves out
    the tokenizer's BOS token (a chat template's text is what the model was fine-tuned on, as it stands).
    """

    def __init__(
        self,
        model: TransformerLM,
        tokenizer: Tokenizer,
        prompts: Sequence[str],
        config: GenerationConfig,
        add_bos: bool = True,
    ) -> None:
        for number, prompt in enumerate(prompts, 1):
            if not prompt:
                raise InputError(f"prompt {number} is empty; give some text for the model to continue")
        self.session = DecodeSession(model, tokenizer, slots=len(prompts))
        self.prompts = list(prompts)
        seed = None  # greedy: nothing is drawn
        if config.temperature > 0:
            seed = config.seed if config.seed is not None else secrets.randbits(32)
        context = model.config.context_length
        self.sequences = [
            self.session.add(
                tokenizer.encode_prompt(prompt, context, bos=add_bos),
                config.model_copy(update={"seed": None if seed is None else seed + index}),
                tag=index,
            )
            for index, prompt in enumerate(self.prompts)
        ]

    def pieces(self, bar: ProgressBar | None = None) -> Iterator[tuple[int, str]]:
        """Sample; yield (prompt index, text) whenever a sequence has new final text; `bar` advances per token."""
        while self.session.sequences:
            for output in self.session.step():
                if bar is not None:
                    bar.advance(1)
                if output.text:
                    yield output.sequence.tag, output.text

    def results(self) -> list[Generation]:
        """The Generations, once `pieces()` has run to its end."""
        return [
            Generation(
                prompt=prompt,
                text=sequence.continuation.text,
                ids=sequence.continuation.ids,
                stop_reason="stop" if sequence.continuation.stopped else "length",
                prompt_ids=sequence.prompt_ids,
                seed=sequence.config.seed,
            )
            for prompt, sequence in zip(self.prompts, self.sequences, strict=True)
        ]


# --- the public API --------------------------------------------------------------------------------------------


@overload
def generate(
    model: TransformerLM,
    tokenizer: Tokenizer,
    prompt: str,
    config: GenerationConfig | None = None,
    *,
    progress: bool = False,
    **options: object,
) -> Generation: ...
@overload
def generate(
    model: TransformerLM,
    tokenizer: Tokenizer,
    prompt: Sequence[str],
    config: GenerationConfig | None = None,
    *,
    progress: bool = False,
    **options: object,
) -> list[Generation]: ...
def generate(
    model: TransformerLM,
    tokenizer: Tokenizer,
    prompt: str | Sequence[str],
    config: GenerationConfig | None = None,
    *,
    progress: bool = False,
    **options: object,
) -> Generation | list[Generation]:
    """Continue `prompt` (a Generation), or each of a list of prompts as one batch (a list of Generations).

    Options are GenerationConfig's fields, given as `config` and/or keywords (max_new_tokens=256,
    temperature=0.8, top_k=None, top_p=0.95, seed=None, stop=()); `progress` draws a bar on stderr.
    InputError for an empty prompt or a bad option.

        generate(model, tokenizer, "Once upon a time", temperature=0, max_new_tokens=50).text
    """
    config = generation_config(config, **options)
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise InputError("no prompt given; give at least one text for the model to continue")
    batch = _PromptBatch(model, tokenizer, prompts, config)
    total = config.max_new_tokens * len(prompts)
    with progress_bar("Generating", total=total, unit="tokens", enabled=progress) as bar:
        for _ in batch.pieces(bar):
            pass
    results = batch.results()
    return results[0] if isinstance(prompt, str) else results


class TextStream:
    """The continuation of one prompt as text pieces while it is sampled; `generation` holds the result after.

    Pieces hold whole characters only (a character split across tokens waits for its last byte), and text
    that might begin a stop string waits until it is clear it does not.
    """

    def __init__(self, batch: _PromptBatch) -> None:
        self._batch = batch
        self._finished = False

    def __iter__(self) -> Iterator[str]:
        for _, piece in self._batch.pieces():
            yield piece
        self._finished = True

    @property
    def generation(self) -> Generation:
        """The whole Generation; only once the stream has been read to its end."""
        if not self._finished:
            raise RuntimeError("read the stream to its end before asking for its generation")
        return self._batch.results()[0]


def stream(
    model: TransformerLM, tokenizer: Tokenizer, prompt: str, config: GenerationConfig | None = None, **options: object
) -> TextStream:
    """Continue one prompt, yielding text pieces as they are sampled; options as for `generate`.

    Read it to its end (`for piece in out: print(piece, end="", flush=True)`), then `out.generation`
    holds the whole result, ids included.
    """
    return TextStream(_PromptBatch(model, tokenizer, [prompt], generation_config(config, **options)))


def chat_reply(
    model: TransformerLM,
    tokenizer: Tokenizer,
    messages: Sequence[dict[str, str]],
    config: GenerationConfig | None = None,
    **options: object,
) -> TextStream:
    """Stream the assistant's next turn after `messages` (role and content dicts), rendered with the chat
    template (lmkit.chat; no BOS token before it, as in fine-tuning) and ended at `<|im_end|>`; options as for
    `generate`. InputError for a model whose tokenizer has no chat template tokens (a base model: fine-tune it
    on conversations first)."""
    from lmkit.chat.template import IM_END, render_text

    if not has_chat_tokens(tokenizer):
        raise InputError(
            "this model has no chat template (its tokenizer lacks <|im_start|> and <|im_end|>): it is a base "
            "model; fine-tune it on conversations first (docs/chat.md), or use lmkit generate"
        )
    config = generation_config(config, **options)
    config = config.model_copy(update={"stop": (*config.stop, IM_END)})
    prompt = render_text(messages, add_generation_prompt=True)
    return TextStream(_PromptBatch(model, tokenizer, [prompt], config, add_bos=False))


@torch.no_grad()
def token_logprobs(
    model: TransformerLM, ids: Sequence[int], top: int = 0
) -> list[tuple[float | None, dict[int, float]]]:
    """For each token of `ids` (at most the model's context), its log-probability given the tokens before it
    and the `top` most likely ids there with theirs; (None, {}) for the first token, which has no context.
    What an evaluation harness asks a completions server for (`logprobs` with `echo`)."""
    device = model.lm_head.weight.device
    logits = model(torch.tensor([list(ids)], device=device))[0, :-1].float()
    logprobs = logits.log_softmax(dim=-1)
    chosen = logprobs.gather(-1, torch.tensor(list(ids[1:]), device=device)[:, None]).squeeze(-1).tolist()
    best = logprobs.topk(top, dim=-1) if top else None
    scores: list[tuple[float | None, dict[int, float]]] = [(None, {})]
    for position, score in enumerate(chosen):
        tops = (
            {}
            if best is None
            else dict(zip(best.indices[position].tolist(), best.values[position].tolist(), strict=True))
        )
        scores.append((score, tops))
    return scores
