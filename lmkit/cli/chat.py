"""`lmkit chat`: talk to a fine-tuned model in the terminal, turn by turn, its answers streamed."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import typer

from lmkit.cli.common import device_option, err_console, inference_dtype_option, sampling_options, threads_option
from lmkit.interrupts import Interrupted, raise_again_on_signals

COMMANDS = "/reset starts a new conversation, /exit (or Ctrl-D) leaves; Ctrl-C stops an answer"

_SAMPLING = sampling_options(per="answer")


def chat(
    checkpoint: Path = typer.Argument(
        ..., help="A checkpoint fine-tuned on conversations (runs/x/best.pt), or its run folder (its best.pt)."
    ),
    message: str | None = typer.Option(
        None, "--message", "-m", help="Send this one message, print the answer and exit (no prompt loop)."
    ),
    system: str | None = typer.Option(None, "--system", help="A system message that opens the conversation."),
    max_new_tokens: int = _SAMPLING["max_new_tokens"],
    temperature: float = _SAMPLING["temperature"],
    top_p: float = _SAMPLING["top_p"],
    top_k: int | None = _SAMPLING["top_k"],
    seed: int | None = _SAMPLING["seed"],
    device: str = device_option(),
    dtype: str = inference_dtype_option(),
    threads: int | None = threads_option(),
) -> None:
    """Chat with a model fine-tuned on conversations (docs/chat.md): multi-turn, answers streamed.

    Example:

        lmkit chat runs/sft --system "Answer briefly." --temperature 0.7
    """
    from lmkit.generate import chat_reply, generation_config, load_model_and_tokenizer
    from lmkit.threads import apply_threads

    config = generation_config(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                               seed=seed)  # fmt: skip
    apply_threads(threads)
    model, tokenizer = load_model_and_tokenizer(checkpoint, device, dtype)
    opening = [{"role": "system", "content": system}] if system else []
    messages = list(opening)

    def answer(text: str) -> None:
        messages.append({"role": "user", "content": text})
        pieces, said = chat_reply(model, tokenizer, messages, config), []
        try:
            for piece in pieces:
                said.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
        except Interrupted as interrupted:  # Ctrl-C stops this answer, not the chat; SIGTERM ends it
            if interrupted.signum != signal.SIGINT:
                raise
            raise_again_on_signals()
            sys.stdout.write(" [stopped]")
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(said)})

    if message is not None:
        answer(message)
        return
    if sys.stdin.isatty():
        err_console.print(f"[dim]{COMMANDS}[/dim]", highlight=False)
    for line in _user_lines():
        if line.strip() == "/exit":
            return
        if line.strip() == "/reset":
            messages[:] = opening
            err_console.print("[dim](a new conversation)[/dim]", highlight=False)
        elif line.strip():
            answer(line)


def _user_lines() -> Iterator[str]:
    """The user's lines until Ctrl-D (end of input); a prompt on a terminal."""
    while True:
        try:
            yield input("> " if sys.stdin.isatty() else "")
        except EOFError:
            return
