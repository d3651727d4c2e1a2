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
of all earlier positions. A prompt longer than the model's context keeps its last `context_length` tokens.
When the cache is full (context_length positions) the window slides: the cache is emptied and refilled
with the last `context_length // 2` tokens (the newest included), which start again at position 0; then
generation goes on one token at a time. So every token is predicted from between context_length // 2 and
context_length preceding tokens, and a slide costs one forward pass over half a window per
context_length // 2 new tokens, where sliding by one token would cost a full window per token (what
llama.cpp's context shift does, halving the window, for the same reason).

Several prompts run as one batch without padding: all sequences advance one position per step from the
shortest prompt's end, and a sequence whose prompt is longer is fed its own prompt tokens at those
positions instead of sampled ones. Each sequence stops at `<|endoftext|>`, at any `stop` string (the text
is cut before it) or after `max_new_tokens` new tokens.
"""

from __future__ import annotations

import codecs
import secrets
from collections.abc import Callable, Iterator, Sequence
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
    `<|endoftext|>` id) included. `prompt_ids` are the tokens the model was given (the prompt's last
    context_length tokens). `seed` repeats the run; it is None for greedy decoding (temperature 0), which has
    no randomness to repeat.
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


class BatchDecoder:
    """Decodes a batch of prompts with the KV cache, one position per `step`; rows can be dropped between steps.

    `prompts` are non-empty and at most context_length long. Every row advances one position per step from
    the shortest prompt's end, so row i's token p always sits at position p (no padding): a row whose prompt
    is longer is fed its own prompt tokens at those positions. Each row's logits therefore depend only on its
    own tokens, whatever else is in the batch. `rows` holds the original indices of the rows still decoded.
    See the module docstring for how the window slides past the context.
    """

    @torch.inference_mode()
    def __init__(self, model: TransformerLM, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> None:
        self.model = model
        self.rows = list(range(len(prompts)))
        self._lengths = torch.tensor([len(ids) for ids in prompts], device=model.lm_head.weight.device)
        self._total = int(self._lengths.max()) + max_new_tokens
        self._tokens = torch.zeros(len(prompts), self._total, dtype=torch.long, device=self._lengths.device)
        for row, ids in enumerate(prompts):
            self._tokens[row, : len(ids)] = torch.tensor(ids)
        self._keep = max(1, model.config.context_length // 2)
        self._position = int(self._lengths.min())
        self._cache = model.new_kv_cache(len(prompts))
        self._started = False

    @property
    def done(self) -> bool:
        """Every row has max_new_tokens new tokens, or no row is left."""
        return self._position == self._total or not self.rows

    @torch.inference_mode()
    def step(self, pick: Callable[[Tensor, Tensor], Tensor]) -> tuple[Tensor, Tensor]:
        """Choose the tokens at the next position: (tokens, is_new), both (len(rows),).

        `pick(logits, is_new)` turns last-position logits (B, V) into token ids (B,); a row whose prompt
        still has a token at this position gets that token instead (is_new False).
        """
        if self.done:
            raise RuntimeError("the decoder is done; no position is left to decode")
        position, cache = self._position, self._cache
        if not self._started:
            self._started = True
            fed = self._tokens[:, :position]
        elif cache.length == cache.max_len:
            cache.length = 0  # rewind: refill with the last `keep` tokens from position 0
            fed = self._tokens[:, position - self._keep : position]
        else:
            fed = self._tokens[:, position - 1 : position]
        logits = self.model(fed, kv_cache=cache, last_only=True)[:, -1]
        is_new = self._lengths <= position
        self._tokens[:, position] = torch.where(is_new, pick(logits, is_new), self._tokens[:, position])
        self._position += 1
        return self._tokens[:, position], is_new

    @torch.inference_mode()
    def drop(self, keep: Sequence[bool]) -> None:
        """Stop decoding the rows whose entry in `keep` (one per row of `rows`) is False."""
        kept = [index for index, wanted in enumerate(keep) if wanted]
        if len(kept) == len(self.rows):
            return
        index = torch.tensor(kept, dtype=torch.long, device=self._tokens.device)
        self.rows = [self.rows[i] for i in kept]
        self._tokens, self._lengths = self._tokens[index], self._lengths[index]
        self._cache.select_rows(index)


def token_steps(
    model: TransformerLM, prompts: Sequence[Sequence[int]], max_new_tokens: int, pick: Callable[[Tensor], Tensor]
) -> Iterator[tuple[Tensor, Tensor]]:
    """Decode with the KV cache; yield (tokens, is_new), both (B,), at each position after the shortest prompt.

    `prompts` are non-empty and at most context_length long; `pick` turns last-position logits (B, V) into
    token ids (B,). A row whose prompt still has a token at this position gets that token (is_new False).
    It runs until every row has max_new_tokens new tokens; stop iterating to end early. See BatchDecoder.
    """
    decoder = BatchDecoder(model, prompts, max_new_tokens)
    while not decoder.done:
        yield decoder.step(lambda logits, _is_new: pick(logits))


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
    """Prompts sampled together: `pieces()` runs the loop, `results()` reads the Generations afterwards."""

    def __init__(self, model: TransformerLM, tokenizer: Tokenizer, prompts: Sequence[str], config: GenerationConfig):
        for number, prompt in enumerate(prompts, 1):
            if not prompt:
                raise InputError(f"prompt {number} is empty; give some text for the model to continue")
        if tokenizer.vocab_size > model.config.vocab_size:
            raise InputError(
                f"the tokenizer has {tokenizer.vocab_size} ids but the model only {model.config.vocab_size}"
            )
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.prompts = list(prompts)
        if config.temperature == 0:
            self.seed = None  # greedy: nothing is drawn
        else:
            self.seed = config.seed if config.seed is not None else secrets.randbits(32)
        context = model.config.context_length
        self.prompt_ids = [tokenizer.encode(prompt)[-context:] for prompt in self.prompts]
        stops = (END_OF_TEXT, *config.stop)
        self.sequences = [Continuation(tokenizer.vocab, stops, config.max_new_tokens) for _ in self.prompts]

    def pieces(self, bar: ProgressBar | None = None) -> Iterator[tuple[int, str]]:
        """Sample; yield (prompt index, text) whenever a sequence has new final text; `bar` advances per token."""
        config, vocab_size = self.config, self.tokenizer.vocab_size
        generator = torch.Generator(device=self.model.lm_head.weight.device).manual_seed(self.seed or 0)

        def pick(logits: Tensor) -> Tensor:
            # Only ids the tokenizer can decode: a model's vocabulary may be padded past the tokenizer's.
            return sample_next_token(logits[:, :vocab_size], config.temperature, config.top_k, config.top_p, generator)

        for tokens, is_new in token_steps(self.model, self.prompt_ids, config.max_new_tokens, pick):
            for index, (token, new) in enumerate(zip(tokens.tolist(), is_new.tolist(), strict=True)):
                sequence = self.sequences[index]
                if new and not sequence.done:
                    if bar is not None:
                        bar.advance(1)
                    if piece := sequence.add(token):
                        yield index, piece
            if all(sequence.done for sequence in self.sequences):
                break
        for index, sequence in enumerate(self.sequences):
            if piece := sequence.finish():
                yield index, piece

    def results(self) -> list[Generation]:
        """The Generations, once `pieces()` has run to its end."""
        return [
            Generation(
                prompt=prompt,
                text=sequence.text,
                ids=sequence.ids,
                stop_reason="stop" if sequence.stopped else "length",
                prompt_ids=prompt_ids,
                seed=self.seed,
            )
            for prompt, prompt_ids, sequence in zip(self.prompts, self.prompt_ids, self.sequences, strict=True)
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
    template (lmkit.chat) and ended at `<|im_end|>`; options as for `generate`. InputError for a model whose
    tokenizer has no chat template tokens (a base model: fine-tune it on conversations first)."""
    from lmkit.chat.template import IM_END, render_text

    if not has_chat_tokens(tokenizer):
        raise InputError(
            "this model has no chat template (its tokenizer lacks <|im_start|> and <|im_end|>): it is a base "
            "model; fine-tune it on conversations first (docs/chat.md), or use lmkit generate"
        )
    config = generation_config(config, **options)
    config = config.model_copy(update={"stop": (*config.stop, IM_END)})
    prompt = render_text(messages, add_generation_prompt=True)
    return stream(model, tokenizer, prompt, config)


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
