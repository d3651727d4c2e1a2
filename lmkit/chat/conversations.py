"""Conversation files: JSON Lines of `{"messages": [{"role": ..., "content": ...}, ...]}` (also .gz or .zst),
the format chat datasets and the OpenAI API use.

A record is malformed when it is not such an object, a role is not system, user or assistant, a content is
not a string or holds a template marker, or no message is the assistant's; and, once rendered, when it is
longer than the model's context. Malformed records are counted and skipped (`strict=False`) or refused with
the line number of the first (`strict=True`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from lmkit.chat.template import CHAT_TOKENS, ROLES, Message
from lmkit.errors import InputError
from lmkit.tokenizer.sources import jsonl_lines


@dataclass(frozen=True)
class Conversation:
    """One record: its line in the file and its messages."""

    line: int
    messages: list[Message]


@dataclass(frozen=True)
class ConversationFile:
    """The well-formed conversations of a file, and the malformed records skipped (line, reason)."""

    conversations: list[Conversation]
    skipped: list[tuple[int, str]]


def problem(record: object) -> str | None:
    """Why `record` is not a conversation, or None if it is one."""
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or not messages:
        return 'not an object with a "messages" list'
    for number, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            return f"message {number} has no role among {', '.join(ROLES)}"
        if not isinstance(message.get("content"), str):
            return f"message {number}'s content is not a string"
        if any(token in message["content"] for token in CHAT_TOKENS):
            return f"message {number}'s content holds a template marker ({' or '.join(CHAT_TOKENS)})"
    if not any(message["role"] == "assistant" for message in messages):
        return "no assistant message to learn from"
    return None


def read_conversations(path: str | os.PathLike, strict: bool = False) -> ConversationFile:
    """The conversations of the JSON Lines file `path`; malformed records are skipped and listed, or with
    `strict` refused (InputError naming the line). InputError for a missing file or one with none."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"conversations file {path} does not exist")
    conversations, skipped = [], []
    for line_number, line in jsonl_lines(path):
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            reason = "not valid JSON"
        else:
            reason = problem(record)
        if reason is not None:
            if strict:
                raise InputError(f"{path}, line {line_number}: {reason}")
            skipped.append((line_number, reason))
            continue
        messages = [Message(role=m["role"], content=m["content"]) for m in record["messages"]]
        conversations.append(Conversation(line_number, messages))
    if not conversations:
        raise InputError(f"{path} holds no conversation ({len(skipped)} malformed records)")
    return ConversationFile(conversations, skipped)
