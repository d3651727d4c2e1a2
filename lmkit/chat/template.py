"""The chat template: ChatML's turns, `<|im_start|>ROLE\nCONTENT<|im_end|>\n`, as Qwen and SmolLM use it.

A conversation of messages renders to one text, each message as

    <|im_start|>{role}\n{content}<|im_end|>\n

and a prompt for the model's answer ends with `<|im_start|>assistant\n`. The text is encoded as any text is
(the two markers are special tokens, so each is one id), which is exactly what Hugging Face's
`apply_chat_template` does with CHAT_TEMPLATE, the same rule in Jinja, written into exported tokenizers.

For fine-tuning, the tokens trained on are those of each assistant message's content and its `<|im_end|>`:
a token counts when it starts inside that stretch of the text (the `assistant\n` before it, the other turns
and the markers that open turns are context only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import numpy as np

from lmkit.errors import InputError
from lmkit.tokenizer import Tokenizer

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
CHAT_TOKENS = (IM_START, IM_END)
ROLES = ("system", "user", "assistant")
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class Message(TypedDict):
    """One turn: its role (system, user or assistant) and its text."""

    role: str
    content: str


def has_chat_tokens(tokenizer: Tokenizer) -> bool:
    """Whether `tokenizer` has the template's two special tokens."""
    return all(token in tokenizer.special_ids for token in CHAT_TOKENS)


def add_chat_tokens(tokenizer: Tokenizer) -> Tokenizer:
    """`tokenizer` with the template's special tokens added (when absent) after its largest id; the ids of
    every other token are unchanged."""
    missing = [token for token in CHAT_TOKENS if token not in tokenizer.special_ids]
    if not missing:
        return tokenizer
    vocab, next_id = dict(tokenizer.vocab), max(tokenizer.vocab) + 1
    for offset, token in enumerate(missing):
        vocab[next_id + offset] = token.encode("utf-8")
    return Tokenizer(vocab, tokenizer.merges, [*tokenizer.special_tokens, *missing], tokenizer.layout)


def render_text(messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
    """The conversation as the template writes it (CHAT_TEMPLATE gives the same text)."""
    text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    return text + (f"{IM_START}assistant\n" if add_generation_prompt else "")


def render(
    tokenizer: Tokenizer, messages: Sequence[Message], add_generation_prompt: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The ids of the rendered conversation and, for each, whether fine-tuning trains on it (see the module
    docstring). InputError if the tokenizer lacks the template's tokens."""
    if not has_chat_tokens(tokenizer):
        raise InputError(
            f"the tokenizer has no chat template tokens ({IM_START}, {IM_END}): fine-tune the model on conversations "
            "first (docs/chat.md)"
        )
    text = render_text(messages, add_generation_prompt)
    ids = tokenizer.encode_array(text).astype(np.int64)
    lengths = np.array([len(tokenizer.vocab[int(i)]) for i in ids], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])  # each token's byte offset in the text
    trained = np.zeros(len(ids), dtype=bool)
    offset = 0
    for message in messages:
        head = f"{IM_START}{message['role']}\n".encode()
        body = f"{message['content']}{IM_END}".encode()
        if message["role"] == "assistant":
            begin = offset + len(head)
            trained |= (starts >= begin) & (starts < begin + len(body))
        offset += len(head) + len(body) + 1  # the newline after each turn
    return ids, trained
