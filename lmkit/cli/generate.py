"""`lmkit generate`: sample text from a checkpoint, streamed to the terminal as it comes."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from lmkit.cli.common import (
    console,
    device_option,
    err_console,
    inference_dtype_option,
    print_json,
    sampling_options,
    threads_option,
)
from lmkit.errors import InputError

if TYPE_CHECKING:  # torch-heavy modules, imported inside the command at run time
    from lmkit.generate import Generation, GenerationConfig
    from lmkit.model import TransformerLM
    from lmkit.tokenizer import Tokenizer

_SAMPLING = sampling_options(per="prompt")


def _read_prompt_file(path: Path) -> str:
    """A prompt file's text, less the one newline that editors put at the end."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"prompt file {path} does not exist") from None
    except (UnicodeDecodeError, IsADirectoryError) as err:
        raise InputError(f"prompt file {path} is not a UTF-8 text file ({err})") from None
    return text.removesuffix("\n")


def _stream_one(model: TransformerLM, tokenizer: Tokenizer, prompt: str, config: GenerationConfig) -> Generation:
    """Print the prompt, then its continuation piece by piece as it is sampled; return the Generation."""
    from lmkit.generate import stream

    sys.stdout.write(prompt)
    for piece in (pieces := stream(model, tokenizer, prompt, config)):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return pieces.generation


def _print_texts(results: list[Generation], show: bool) -> None:
    """Print each prompt and its continuation (`show`: they were not streamed), ruled apart in a batch."""
    for number, result in enumerate(results, 1):
        if len(results) > 1:
            console.rule(f"prompt {number} of {len(results)}", style="dim")
        if show or len(results) > 1:
            sys.stdout.write(result.prompt + result.text + "\n")


def generate(
    checkpoint: Path = typer.Argument(
        ..., help="A checkpoint written by lmkit train (runs/x/best.pt), or a run folder (its best.pt)."
    ),
    prompts: list[str] = typer.Option([], "--prompt", "-p", help="Text to continue (repeat for a batch)."),
    prompt_files: list[Path] = typer.Option(
        [], "--prompt-file", help="A UTF-8 file whose text is one prompt (repeatable; after the --prompt ones)."
    ),
    max_new_tokens: int = _SAMPLING["max_new_tokens"],
    temperature: float = _SAMPLING["temperature"],
    top_p: float = _SAMPLING["top_p"],
    top_k: int | None = _SAMPLING["top_k"],
    seed: int | None = _SAMPLING["seed"],
    stop: list[str] = typer.Option([], "--stop", help="Also stop at this text (repeatable; <|endoftext|> always)."),
    no_stream: bool = typer.Option(False, "--no-stream", help="Print the text once it is complete."),
    as_json: bool = typer.Option(False, "--json", help="Print prompts, texts, ids and tokens/s as one JSON object."),
    device: str = device_option(),
    dtype: str = inference_dtype_option(),
    threads: int | None = threads_option(),
) -> None:
    """Generate text from a trained checkpoint, streamed as it is sampled.

    Example:

        lmkit generate runs/tinystories/best.pt --prompt "Once upon a time" --temperature 0.8 --top-p 0.9 --seed 1
    """
    from lmkit.generate import generate as generate_batch
    from lmkit.generate import generation_config, load_model_and_tokenizer
    from lmkit.threads import apply_threads

    config = generation_config(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop=stop
    )
    texts = [*prompts, *map(_read_prompt_file, prompt_files)]
    if not texts:
        raise InputError("no prompt given; pass --prompt TEXT or --prompt-file FILE")
    apply_threads(threads)
    model, tokenizer = load_model_and_tokenizer(checkpoint, device, dtype)
    start = time.perf_counter()
    if len(texts) == 1 and not (no_stream or as_json):
        results = [_stream_one(model, tokenizer, texts[0], config)]
    else:
        results = generate_batch(model, tokenizer, texts, config, progress=not as_json)
    seconds = time.perf_counter() - start
    new_tokens = sum(len(result.ids) for result in results)
    speed = {"new_tokens": new_tokens, "seconds": round(seconds, 3), "tokens_per_s": round(new_tokens / seconds, 1)}
    if as_json:
        keys = ("prompt", "text", "ids", "stop_reason")
        generations = [{key: getattr(result, key) for key in keys} for result in results]
        device_used = str(model.lm_head.weight.device)
        print_json({"generations": generations, "seed": results[0].seed, "device": device_used, **speed})
        return
    _print_texts(results, show=no_stream)
    seed = "greedy" if results[0].seed is None else f"seed {results[0].seed}"
    err_console.print(
        f"[dim]{new_tokens} tokens in {seconds:.2f} s ({speed['tokens_per_s']} tokens/s), {seed}[/dim]",
        highlight=False,
    )
