"""`lmkit quickstart`: the whole path on the bundled Tiny Shakespeare, on a laptop CPU, in a few minutes.

Every stage is the library call the matching command makes, and training goes through the very config
path of `lmkit train`: the quickstart writes a real run.toml into the run folder and trains from it, so
the user can read it, edit it and rerun it. The run folder ends up holding:

    data/train.txt, data/val.txt    the corpus split at a speech boundary: the last 10% is validation
    tokenizer.json                  a byte-level BPE tokenizer trained on data/train.txt
    data/train.npy, data/val.npy    both splits encoded with it
    run.toml                        the run config, as `lmkit train --config` reads it
    config.toml, metrics.jsonl,     what `lmkit train` writes: the resolved config, the learning curve,
    best.pt, last.pt                and the checkpoints (tokenizer included)

The split is contiguous (the last plays are held out), as nanoGPT splits this corpus: the validation text
is not interleaved with the training text, so a model cannot score well by remembering it. The baseline
the validation loss is judged against is the unigram entropy of the validation tokens: the loss of the
best model that ignores context, knowing even the validation set's own token frequencies.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmkit.checkpoint import LAST_CHECKPOINT, METRICS_FILE
from lmkit.errors import InputError
from lmkit.fileio import atomic_write, check_folder_can_be_made
from lmkit.interrupts import Interrupted
from lmkit.threads import usable_cpus

if TYPE_CHECKING:
    import numpy as np

    from lmkit.training.config import RunConfig

BUNDLED_CORPUS = Path(__file__).parent / "data" / "tinyshakespeare.txt"
# Tiny Shakespeare has no document separator, but the tokenizer gets one, as one for the user's own corpus
# would: generation stops at it.
SPECIAL_TOKENS = ["<|endoftext|>"]
VAL_FRACTION = 0.1
DEFAULT_VOCAB_SIZE = 2000
DEFAULT_STEPS = 300
SAMPLE = {"max_new_tokens": 120, "temperature": 0.8, "top_p": 0.95, "seed": 0}
SAMPLE_PROMPT = "ROMEO:\n"

# The model and schedule: 300 steps take one to three minutes on two CPU cores (more when other processes
# compete for them) and reach a validation loss of 3.98 nats against the unigram baseline's 5.81. At 300
# steps a peak lr of 6e-3 does best (3e-3 reaches 4.05, 1e-2 4.03); d_model 192 gains 0.06 nats for 1.6x
# the time and 600 steps 0.17 for twice the time, with the train loss pulling away from the validation
# loss, so neither is worth it here. Every value can be changed with an override, as with `lmkit train --set`.
MODEL = {"context_length": 128, "d_model": 128, "num_layers": 4, "num_heads": 4}
OPTIM = {"lr": 6e-3, "min_lr_ratio": 0.1, "weight_decay": 0.1, "grad_clip": 1.0}
TRAIN = {"batch_size": 32, "device": "cpu", "dtype": "float32", "eval_batches": 8, "log_every": 10}
CURVE_POINTS = 6  # evaluations over the run, the last one at the end

Report = Callable[[str, dict[str, Any]], None]


@dataclass
class QuickstartResult:
    """What the quickstart made and measured."""

    out_dir: Path
    run_config: Path
    checkpoint: Path
    unigram_entropy: float
    val_loss: float
    curve: list[dict[str, float | None]]
    sample: str
    seconds: dict[str, float]


def split_corpus(text: str, val_fraction: float = VAL_FRACTION) -> tuple[str, str]:
    """Split `text` into (train, validation) at the first blank line after the `1 - val_fraction` mark.

    A blank line ends a speech in Tiny Shakespeare, so no speech is cut in two; without one the cut falls
    after a newline, or at the mark itself.
    """
    mark = int(len(text) * (1 - val_fraction))
    for boundary in ("\n\n", "\n"):
        found = text.find(boundary, mark)
        if found >= 0 and found + len(boundary) < len(text):
            cut = found + len(boundary)
            return text[:cut], text[cut:]
    return text[:mark], text[mark:]


def unigram_entropy(tokens: np.ndarray) -> float:
    """The entropy, in nats, of the token frequencies in `tokens`: the loss of the best context-free model."""
    import numpy as np

    counts = np.bincount(np.asarray(tokens, dtype=np.int64))
    probs = counts[counts > 0] / len(tokens)
    return float(-(probs * np.log(probs)).sum())


def run_config_dict(out_dir: Path, vocab_size: int, steps: int) -> dict[str, Any]:
    """The quickstart's run config as the tables of a TOML file (paths as seen from the current folder)."""
    data = out_dir / "data"
    return {
        "data": {
            "train": str(data / "train.npy"),
            "val": str(data / "val.npy"),
            "tokenizer": str(out_dir / "tokenizer.json"),
        },
        "model": {"vocab_size": vocab_size, **MODEL},
        "optim": {**OPTIM, "warmup_steps": max(1, steps // 20)},
        "train": {
            **TRAIN,
            "steps": steps,
            "eval_every": max(1, math.ceil(steps / CURVE_POINTS)),
            "ckpt_every": steps,
            "out_dir": str(out_dir),
        },
    }


def _check_inputs(out_dir: Path, vocab_size: int) -> None:
    smallest = 256 + len(SPECIAL_TOKENS)
    if vocab_size < smallest:
        raise InputError(
            f"--vocab-size {vocab_size} is too small: it must be at least {smallest} "
            f"(256 bytes + {len(SPECIAL_TOKENS)} special token)"
        )
    if (out_dir / LAST_CHECKPOINT).exists():
        raise InputError(
            f"{out_dir} already holds a quickstart run; give another folder with --out, or delete this one"
        )
    check_folder_can_be_made(out_dir, "--out")


def _write_splits(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    train_text, val_text = split_corpus(BUNDLED_CORPUS.read_text(encoding="utf-8"))
    for split, text in (("train", train_text), ("val", val_text)):
        with atomic_write(data_dir / f"{split}.txt", "w") as handle:
            handle.write(text)


def _train_tokenizer(train_text: Path, out_dir: Path, vocab_size: int, progress: bool) -> dict[str, Any]:
    from lmkit.tokenizer.formats import save_tokenizer
    from lmkit.tokenizer.train import train_bpe_with_stats

    trained = train_bpe_with_stats(train_text, vocab_size, SPECIAL_TOKENS, progress=progress)
    path = out_dir / "tokenizer.json"
    save_tokenizer(path, trained.vocab, trained.merges, trained.special_tokens)
    return {
        "tokenizer": str(path),
        "vocab size": len(trained.vocab),
        "trained on": str(train_text),
        "corpus bytes": trained.corpus_bytes,
    }


def _encode_splits(data_dir: Path, tokenizer_path: Path, progress: bool) -> dict[str, Any]:
    from lmkit.tokenizer.encode import encode_file
    from lmkit.tokenizer.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(tokenizer_path)
    workers = usable_cpus()
    facts: dict[str, Any] = {}
    for split in ("train", "val"):
        summary = encode_file(
            data_dir / f"{split}.txt", tokenizer, data_dir / f"{split}.npy", workers=workers, show_progress=progress
        )
        facts[f"{split} tokens"] = summary["tokens"]
        facts[f"{split} bytes/token"] = summary["bytes/token"]
    return facts


def learning_curve(metrics_path: Path) -> list[dict[str, float | None]]:
    """One point per evaluation in a metrics.jsonl: step, tokens, seconds, val loss, and the train loss last
    logged by then (None before the first log)."""
    from lmkit.tracking.runs import read_metrics

    curve: list[dict[str, float | None]] = []
    train_loss = None
    for record in read_metrics(metrics_path):
        if record["event"] == "train":
            train_loss = record["loss"]
        elif record["event"] == "eval":
            curve.append(
                {
                    "step": record["step"],
                    "tokens": record["tokens"],
                    "time_s": record["time_s"],
                    "train_loss": train_loss,
                    "val_loss": record["val_loss"],
                }
            )
    return curve


def sample_text(checkpoint: Path, prompt: str = SAMPLE_PROMPT) -> str:
    """The prompt and a continuation sampled from `checkpoint` with the SAMPLE settings."""
    from lmkit.checkpoint import load_model_and_tokenizer
    from lmkit.generate import generate

    model, tokenizer = load_model_and_tokenizer(checkpoint, device="cpu")
    return prompt + generate(model, tokenizer, prompt, **SAMPLE).text


def next_commands(out_dir: Path) -> list[str]:
    """What to run next: this run's checkpoint and config, then the same path on the user's own corpus."""
    return [
        f'lmkit generate {out_dir}/last.pt --prompt "JULIET:" --max-new-tokens 200',
        f"lmkit ckpt info {out_dir}/last.pt",
        f"lmkit runs plot {out_dir} --out {out_dir}/curve.png",
        f"lmkit train --config {out_dir}/run.toml --set train.out_dir={out_dir}-2    # again, or after editing it",
        "",
        "# your own corpus, my.txt, with documents separated by <|endoftext|>:",
        "mkdir -p my",
        'lmkit tokenizer train my.txt --vocab-size 8000 --special-token "<|endoftext|>" --out my/tokenizer.json',
        "lmkit tokenizer encode my.txt --tokenizer my/tokenizer.json --out my/tokens.npy --val-fraction 0.05",
        f"cp {out_dir}/run.toml my/run.toml",
        "# in my/run.toml: [data] train = my/tokens.train.npy, val = my/tokens.val.npy, tokenizer = my/tokenizer.json;",
        "# model.vocab_size = 8000; train.out_dir = runs/my",
        "lmkit model flops --config my/run.toml",
        "lmkit train --config my/run.toml",
        'lmkit generate runs/my/last.pt --prompt "..."',
    ]


def _config_facts(config: RunConfig, run_toml: Path) -> dict[str, Any]:
    from lmkit.accounting import parameter_counts

    return {
        "run config": str(run_toml),
        "parameters": parameter_counts(config.model)["total"],
        "layers": config.model.num_layers,
        "d_model": config.model.d_model,
        "context": config.model.context_length,
        "steps": config.total_steps,
        "tokens per step": config.tokens_per_step,
    }


def _timed(seconds: dict[str, float], stage: str, start: float) -> float:
    now = time.perf_counter()
    seconds[stage] = now - start
    return now


def run_quickstart(
    out_dir: str | os.PathLike = "runs/quickstart",
    *,
    steps: int = DEFAULT_STEPS,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    overrides: list[str] = (),
    progress: bool = True,
    report: Report | None = None,
) -> QuickstartResult:
    """Run the whole path on the bundled corpus into `out_dir` and return what it made and measured.

    `overrides` are `table.key=value` strings applied to the run config, as `lmkit train --set` applies
    them. `report(stage, facts)` is called as each stage ends ("tokenizer", "encode", "config", "train",
    "sample"; "interrupted" if Ctrl-C stopped training), so a caller can show progress. InputError if
    `out_dir` already holds a run, the vocabulary is too small or an override is invalid; nothing is
    written then.
    """
    import numpy as np

    from lmkit.training.config import apply_overrides, to_toml, validate_config
    from lmkit.training.loop import train_from_files

    out_dir = Path(out_dir)
    _check_inputs(out_dir, vocab_size)
    raw = run_config_dict(out_dir, vocab_size, steps)
    apply_overrides(raw, list(overrides))
    # Validated before any work, so a bad override costs nothing.
    config = validate_config(raw, "quickstart config", list(overrides))
    tell = report or (lambda stage, facts: None)
    seconds: dict[str, float] = {}
    start = began = time.perf_counter()

    data_dir = out_dir / "data"
    _write_splits(data_dir)
    tell("tokenizer", _train_tokenizer(data_dir / "train.txt", out_dir, vocab_size, progress))
    start = _timed(seconds, "tokenizer", start)
    encoded = _encode_splits(data_dir, out_dir / "tokenizer.json", progress)
    baseline = unigram_entropy(np.load(data_dir / "val.npy", mmap_mode="r"))
    tell("encode", {**encoded, "unigram entropy (nats)": baseline})
    start = _timed(seconds, "encode", start)

    run_toml = out_dir / "run.toml"
    with atomic_write(run_toml, "w") as handle:
        handle.write(to_toml(config))
    tell("config", _config_facts(config, run_toml))
    result = train_from_files(run_toml, show_progress=progress)
    if result.interrupted:  # Ctrl-C: the loop saved last.pt; stop here as `lmkit train` would
        tell("interrupted", {"resume": f"lmkit train --resume {result.checkpoint}"})
        raise Interrupted(result.stop_signal)
    curve = learning_curve(Path(config.train.out_dir) / METRICS_FILE)
    untrained = math.log(config.model.vocab_size)  # a uniform guess over the vocabulary
    tell(
        "train", {"curve": curve, "val loss": result.val_loss, "unigram entropy (nats)": baseline, "uniform": untrained}
    )
    start = _timed(seconds, "train", start)

    sample = sample_text(result.checkpoint)
    tell("sample", {"prompt": SAMPLE_PROMPT, "text": sample, **SAMPLE})
    _timed(seconds, "sample", start)
    seconds["total"] = time.perf_counter() - began
    return QuickstartResult(
        out_dir=out_dir,
        run_config=run_toml,
        checkpoint=result.checkpoint,
        unigram_entropy=baseline,
        val_loss=result.val_loss,
        curve=curve,
        sample=sample,
        seconds=seconds,
    )
