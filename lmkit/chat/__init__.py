"""Conversations: the chat template that marks turns with special tokens, and conversation files for
supervised fine-tuning (see docs/chat.md)."""

from lmkit.chat.conversations import Conversation, read_conversations
from lmkit.chat.template import CHAT_TEMPLATE, CHAT_TOKENS, add_chat_tokens, has_chat_tokens, render

__all__ = [
    "CHAT_TEMPLATE",
    "CHAT_TOKENS",
    "Conversation",
    "add_chat_tokens",
    "has_chat_tokens",
    "read_conversations",
    "render",
]
