"""Supervised fine-tuning data (`[data] format = "chat"`): conversations packed into rows, the loss only on
what the assistant says.

Each conversation is rendered with the chat template (lmkit.chat) to ids and a mask of the tokens to train
on. Conversations are packed whole, in file order, into rows of context_length + 1 tokens; a conversation
that does not fit what is left of a row starts the next one, and the rest of the row is padding, which is
never trained on. A row's targets are its ids shifted by one, IGNORE (-100) where the mask is off, so the
loss counts exactly the assistant's content and its `<|im_end|>`. Training rows are drawn uniformly at
random with the run's generator (resumable); validation uses the first eval_batches x batch_size rows of the
validation file (all of them, when there are fewer).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch

from lmkit.chat import read_conversations, render
from lmkit.chat.template import IM_END
from lmkit.errors import InputError
from lmkit.model.names import EMBEDDINGS, LM_HEAD
from lmkit.tokenizer import Tokenizer
from lmkit.training.config import RunConfig
from lmkit.training.loss import IGNORE


def pack_conversations(
    conversations: list[list[dict]], tokenizer: Tokenizer, context_length: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(ids (N, T + 1), targets (N, T), how many conversations were too long for a row) of the packed rows."""
    width, pad = context_length + 1, tokenizer.special_ids[IM_END]
    rows_ids, rows_trained, ids, trained, too_long = [], [], [], [], 0

    def close_row() -> None:
        rows_ids.append(np.concatenate([*ids, np.full(width - sum(map(len, ids)), pad)]))
        rows_trained.append(np.concatenate([*trained, np.zeros(width - sum(map(len, trained)), dtype=bool)]))
        ids.clear(), trained.clear()

    for messages in conversations:
        conversation_ids, conversation_trained = render(tokenizer, messages)
        if len(conversation_ids) > width:
            too_long += 1
            continue
        if sum(map(len, ids)) + len(conversation_ids) > width:
            close_row()
        ids.append(conversation_ids), trained.append(conversation_trained)
    if ids:
        close_row()
    if not rows_ids:
        return torch.zeros(0, width, dtype=torch.int64), torch.zeros(0, width - 1, dtype=torch.int64), too_long
    all_ids = torch.from_numpy(np.stack(rows_ids).astype(np.int64))
    mask = torch.from_numpy(np.stack(rows_trained))
    return all_ids, all_ids[:, 1:].where(mask[:, 1:], IGNORE), too_long


@dataclass
class ChatBatches:
    """The packed training rows and the fixed validation batches of a fine-tuning run."""

    train_ids: torch.Tensor
    train_targets: torch.Tensor
    val_batches: list[tuple[torch.Tensor, torch.Tensor]]

    def draw(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (B, T + 1), targets (B, T)) of `batch_size` rows drawn uniformly at random."""
        rows = torch.randint(0, len(self.train_ids), (batch_size,), generator=generator)
        return self.train_ids[rows], self.train_targets[rows]


def load_chat_batches(config: RunConfig, tokenizer: Tokenizer) -> ChatBatches:
    """Read, check and pack the run's conversation files; malformed records are reported on stderr and
    skipped, or refused under data.strict. InputError when a file yields no row to train or validate on."""
    context, train = config.model.context_length, config.train
    packed = {}
    for split, path in (("train", config.data.train), ("validation", config.data.val)):
        read = read_conversations(path, strict=config.data.strict)
        ids, targets, too_long = pack_conversations([c.messages for c in read.conversations], tokenizer, context)
        if too_long and config.data.strict:
            raise InputError(f"{path}: {too_long} conversations are longer than the context ({context + 1} tokens)")
        skipped = len(read.skipped) + too_long
        if skipped:
            first = f"first at line {read.skipped[0][0]}: {read.skipped[0][1]}" if read.skipped else "too long"
            print(
                f"warning: {path}: skipped {skipped} of {len(read.conversations) + len(read.skipped)} records "
                f"({too_long} longer than the context; {first}); data.strict = true refuses them",
                file=sys.stderr,
            )
        if not bool((targets != IGNORE).any()):
            raise InputError(f"{path}: no assistant token to {'train on' if split == 'train' else 'validate'}")
        packed[split] = (ids, targets)
    val_ids, val_targets = packed["validation"]
    count = min(len(val_ids), train.batch_size * train.eval_batches)
    pairs = zip(val_ids[:count].split(train.batch_size), val_targets[:count].split(train.batch_size), strict=True)
    return ChatBatches(*packed["train"], list(pairs))


def grown_vocabulary(state: dict[str, torch.Tensor], vocab_size: int) -> dict[str, torch.Tensor]:
    """`state` with its embedding and LM-head rows grown to `vocab_size`, each new row the mean of the old
    ones: the logits of the old tokens do not change, and a new token starts as an average one."""
    grown = dict(state)
    done: dict[int, torch.Tensor] = {}  # a tied matrix is grown once and stays shared
    for name in (EMBEDDINGS, LM_HEAD):
        weight = state.get(name)
        if weight is None or weight.shape[0] >= vocab_size:
            continue
        if id(weight) not in done:
            extra = weight.mean(dim=0, keepdim=True).expand(vocab_size - weight.shape[0], -1)
            done[id(weight)] = torch.cat([weight, extra])
        grown[name] = done[id(weight)]
    return grown
