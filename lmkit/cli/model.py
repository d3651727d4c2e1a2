"""`lmkit model ...`: what a model shape costs (parameters, FLOPs, memory, training time)."""

from __future__ import annotations

from pathlib import Path

import typer

from lmkit.cli.common import byte_size, print_json, print_table

app = typer.Typer(no_args_is_help=True, help="Account for a Transformer LM's parameters, FLOPs, memory and time.")

_SHAPE_FLAGS = ("vocab_size", "context_length", "d_model", "num_layers", "num_heads", "d_ff", "num_kv_heads")


def _resolve_config(preset: str | None, config: Path | None, shape: dict[str, int | None]):
    """The ModelConfig from a preset, a run config's [model] table, or the shape flags (which override)."""
    from pydantic import ValidationError

    from lmkit.errors import InputError, validation_error_message
    from lmkit.model.config import ModelConfig, load_model_table, model_preset

    if preset is not None and config is not None:
        raise InputError("give --preset or --config, not both")
    given = {name: value for name, value in shape.items() if value is not None}
    if preset is not None:
        fields = {**model_preset(preset).model_dump(), **given}
    elif config is not None:
        fields = {**load_model_table(config).model_dump(), **given}
    else:
        missing = [f"--{name.replace('_', '-')}" for name in _SHAPE_FLAGS[:5] if name not in given]
        if missing:
            raise InputError(f"give --preset, --config or the whole shape (missing {', '.join(missing)})")
        fields = given
    try:
        return ModelConfig.model_validate(fields)
    except ValidationError as err:
        raise InputError(validation_error_message(err)) from None


def _count(n: float, unit: str = "") -> str:
    """A big number exactly, with a short form: 2,127,057,600 (2.13 G)."""
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n:,} ({n / scale:.3g} {prefix}{unit})"
    return f"{n:,} {unit}".rstrip()


def _print_report(facts: dict) -> None:
    """The report as rich tables, one per topic."""
    from lmkit.accounting import FLOP_LABELS, GB

    print_table("Model", {**facts["model"], "batch size": facts["batch_size"], "sequence length": facts["seq_len"]})
    params = facts["parameters"]
    rows = {name: _count(n) for name, n in params.items()}
    print_table("Parameters", {**rows, "float32 memory": f"{facts['parameter_memory_bytes'] / GB:.3f} GB"})
    flops, share = facts["forward_flops"], facts["forward_flops_share"]
    rows = {FLOP_LABELS[name]: f"{share[name]:5.1%}  {_count(flops[name], 'FLOP')}" for name in share}
    rows["forward total"] = _count(flops["total"], "FLOP")
    if "forward_flops_measured" in facts:
        measured = facts["forward_flops_measured"]
        rows["measured (FlopCounterMode)"] = f"{_count(measured, 'FLOP')}, {measured / flops['total'] - 1:+.2%}"
    rows["training step (3x forward)"] = _count(facts["train_step_flops"], "FLOP")
    print_table("FLOPs", rows)
    memory = facts["training_memory_bytes"]
    rows = {name.replace("_", " "): f"{n / GB:.3f} GB" for name, n in memory.items()}
    rows["formula (bytes)"] = f"{memory['activations_per_sequence']:,} · batch_size + {memory['fixed']:,}"
    rows[f"largest batch in {facts['gpu_memory_gb']:g} GB"] = facts["max_batch_size"]
    print_table("Training memory (AdamW, float32)", rows)
    rows = {"sequences x tokens": f"{facts['batch_size']} x {facts['seq_len']}"}
    rows.update({dtype: byte_size(n) for dtype, n in facts["kv_cache_bytes"].items()})
    print_table("KV cache (generation)", rows)
    if "training_time" in facts:
        time = facts["training_time"]
        print_table(
            "Training time",
            {**time, "hours": time["seconds"] / 3600, "formula": "steps · step FLOPs / (peak · MFU)"},
        )


@app.command()
def flops(
    preset: str | None = typer.Option(
        None, "--preset", help="A known shape: gpt2-small, gpt2-medium, gpt2-large, gpt2-xl, tinystories-17m."
    ),
    config: Path | None = typer.Option(None, "--config", help="A run config TOML; only its model table is read."),
    vocab_size: int | None = typer.Option(None, "--vocab-size", help="Token ids in the vocabulary."),
    context_length: int | None = typer.Option(None, "--context-length", help="The longest sequence."),
    d_model: int | None = typer.Option(None, "--d-model", help="Width of the residual stream."),
    num_layers: int | None = typer.Option(None, "--num-layers", help="Transformer blocks."),
    num_heads: int | None = typer.Option(None, "--num-heads", help="Attention heads (must divide d_model)."),
    d_ff: int | None = typer.Option(None, "--d-ff", help="Feed-forward width (default 8/3 d_model, rounded to 64)."),
    num_kv_heads: int | None = typer.Option(
        None, "--num-kv-heads", help="Key/value heads for grouped-query attention (default: --num-heads)."
    ),
    batch_size: int = typer.Option(1, "--batch-size", help="Sequences per step."),
    seq_len: int | None = typer.Option(None, "--seq-len", help="Tokens per sequence (default: the context length)."),
    gpu_memory: float = typer.Option(80.0, "--gpu-memory", help="Accelerator memory in GB (10^9 bytes)."),
    steps: int | None = typer.Option(None, "--steps", help="Training steps, for a training-time estimate."),
    peak_tflops: float | None = typer.Option(None, "--peak-tflops", help="The accelerator's peak TFLOP/s."),
    mfu: float = typer.Option(0.5, "--mfu", help="Model FLOPs utilisation assumed for the training time."),
    measure: bool = typer.Option(False, "--measure", help="Also count a real forward pass's FLOPs (meta device)."),
    json_output: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
) -> None:
    """Count a model's parameters, FLOPs per matrix product, training memory and training time.

    Example: lmkit model flops --preset gpt2-xl --measure --steps 400000 --batch-size 1024 --peak-tflops 19.5
    (explicit flags override a preset or config: lmkit model flops --preset gpt2-small --context-length 2048)
    """
    from lmkit.accounting import report

    values = (vocab_size, context_length, d_model, num_layers, num_heads, d_ff, num_kv_heads)
    shape = dict(zip(_SHAPE_FLAGS, values, strict=True))
    model_config = _resolve_config(preset, config, shape)
    facts = report(model_config, batch_size, seq_len, gpu_memory, steps, peak_tflops, mfu, measure)
    if json_output:
        print_json(facts)
    else:
        _print_report(facts)
