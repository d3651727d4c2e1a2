"""`lmkit quickstart`: the whole path on the bundled Tiny Shakespeare (or the user's own corpus), on a laptop
CPU, in a few minutes.

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
is not interleaved with the training text, so a model cannot score well by remembering it.

On the user's own corpus (`corpus=`: files, folders, globs, in any format the tokenizer reads) the
tokenizer trains on all of it, the corpus is encoded once into data/all.npy, and the last tenth of its tokens,
from a document boundary on, becomes data/val.npy (the rest data/train.npy; all.npy is then removed). The
vocabulary grows with the corpus, and the steps fit a time budget (`minutes`, 3 by default): a few steps are
timed first, and the run takes as many as fit in what is left of the budget, at most ten passes over the data.

The baseline the validation loss is judged against is the unigram entropy of the validation tokens: the loss
of the best model that ignores context, knowing even the validation set's own token frequencies.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmkit.errors import InputError
from lmkit.fileio import atomic_write, check_folder_can_be_made
from lmkit.interrupts import Interrupted
from lmkit.threads import usable_cpus

if TYPE_CHECKING:
    import numpy as np

    from lmkit.tokenizer.sources import Corpus
    from lmkit.training.config import RunConfig

BUNDLED_CORPUS = Path(__file__).parent / "data" / "tinyshakespeare.txt"
# Tiny Shakespeare has no document separator, but the tokenizer gets one, as one for the user's own corpus
# would: generation stops at it.
SPECIAL_TOKENS = ["<|endoftext|>"]
VAL_FRACTION = 0.1
DEFAULT_VOCAB_SIZE = 2000
DEFAULT_STEPS = 300
DEFAULT_MINUTES = 3.0
# The vocabulary for a user's corpus, by its size on disk: (up to this many bytes, vocab size).
VOCAB_BY_SIZE = ((5_000_000, 2000), (50_000_000, 4000), (math.inf, 8000))
MAX_EPOCHS = 10
# Of the time budget left when training starts, the share the steps may take: evaluations, the checkpoint and
# the sample take the rest.
TRAINING_SHARE = 0.8
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


def _check_inputs(out_dir: Path, vocab_size: int, steps: int | None, minutes: float | None) -> None:
    if steps is not None and minutes is not None:
        raise InputError("give --steps or --minutes, not both")
    if minutes is not None and not 0 < minutes <= 24 * 60:
        raise InputError(f"--minutes must be above 0 and at most a day (1440), got {minutes:g}")
    smallest = 256 + len(SPECIAL_TOKENS)
    if vocab_size < smallest:
        raise InputError(
            f"--vocab-size {vocab_size} is too small: it must be at least {smallest} "
            f"(256 bytes + {len(SPECIAL_TOKENS)} special token)"
        )
    from lmkit.checkpoint import LAST_CHECKPOINT

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


def vocab_size_for(corpus: Corpus) -> int:
    """The vocabulary for a user's corpus, larger as the corpus is (VOCAB_BY_SIZE, by its files' sizes)."""
    size = sum(file.path.stat().st_size for file in corpus.files if file.path is not None)
    return next(vocab for limit, vocab in VOCAB_BY_SIZE if size <= limit)


def _split_tokens(data_dir: Path, tokenizer_path: Path) -> None:
    """Split data/all.npy into data/train.npy and data/val.npy: the last tenth of the tokens, from the first
    document boundary (a token after <|endoftext|>) past the mark, or from the mark where there is none."""
    import numpy as np

    from lmkit.tokenizer.tokenizer import Tokenizer

    tokens = np.load(data_dir / "all.npy", mmap_mode="r")
    separator = Tokenizer.load(tokenizer_path).special_ids[SPECIAL_TOKENS[0]]
    mark = int(len(tokens) * (1 - VAL_FRACTION))
    # The boundary nearest the mark, so that a long last document does not leave validation nearly empty.
    boundaries = np.flatnonzero(tokens == separator) + 1
    boundaries = boundaries[(boundaries > 0) & (boundaries < len(tokens))]
    cut = int(boundaries[np.abs(boundaries - mark).argmin()]) if len(boundaries) else mark
    if not VAL_FRACTION / 2 <= (len(tokens) - cut) / len(tokens) <= 2 * VAL_FRACTION:
        cut = mark  # no boundary near the mark: one document is cut in two
    for split, part in (("train", tokens[:cut]), ("val", tokens[cut:])):
        with atomic_write(data_dir / f"{split}.npy") as handle:
            np.save(handle, part)
    (data_dir / "all.npy").unlink()


def _train_tokenizer(source: Corpus | Path, out_dir: Path, vocab_size: int, progress: bool) -> dict[str, Any]:
    from lmkit.tokenizer.formats import save_tokenizer
    from lmkit.tokenizer.train import train_bpe_with_stats

    trained = train_bpe_with_stats(source, vocab_size, SPECIAL_TOKENS, progress=progress)
    path = out_dir / "tokenizer.json"
    save_tokenizer(path, trained.vocab, trained.merges, trained.special_tokens)
    return {
        "tokenizer": str(path),
        "vocab size": len(trained.vocab),
        "trained on": source.describe() if hasattr(source, "describe") else str(source),
        "corpus bytes": trained.corpus_bytes,
    }


def _encode_splits(data_dir: Path, tokenizer_path: Path, progress: bool, corpus: Corpus | None) -> dict[str, Any]:
    """Encode the text splits (the bundled corpus) or the user's corpus, then split its tokens; the splits'
    token counts."""
    import numpy as np

    from lmkit.tokenizer.encode import encode_file
    from lmkit.tokenizer.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(tokenizer_path)
    splits = {split: data_dir / f"{split}.txt" for split in ("train", "val")}
    sources = {"all": corpus} if corpus is not None else splits
    for name, source in sources.items():
        encode_file(source, tokenizer, data_dir / f"{name}.npy", workers=usable_cpus(), show_progress=progress)
    if corpus is not None:
        _split_tokens(data_dir, tokenizer_path)
    return {f"{split} tokens": len(np.load(data_dir / f"{split}.npy", mmap_mode="r")) for split in ("train", "val")}


def seconds_per_step(config: RunConfig, timed_steps: int = 2) -> float:
    """The time one training step of `config` takes here, from `timed_steps` steps on random tokens after one
    untimed step (which pays for the first allocations)."""
    import torch

    from lmkit.device import resolve_device
    from lmkit.model import TransformerLM
    from lmkit.threads import apply_threads

    apply_threads(config.train.threads)
    device = resolve_device(config.train.device, "train.device")
    model = TransformerLM(config.model).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr)
    shape = (config.train.batch_size, config.model.context_length + 1)
    ids = torch.randint(0, config.model.vocab_size, shape, generator=torch.Generator().manual_seed(0)).to(device)
    for step in range(timed_steps + 1):
        if step == 1:
            start = time.perf_counter()
        logits = model(ids[:, :-1])
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / timed_steps


def steps_for_budget(seconds_left: float, step_seconds: float, train_tokens: int, tokens_per_step: int) -> int:
    """The steps that fit TRAINING_SHARE of `seconds_left`, at most MAX_EPOCHS passes over the training
    tokens, and at least 10."""
    fit = math.floor(seconds_left * TRAINING_SHARE / step_seconds)
    passes = math.floor(MAX_EPOCHS * train_tokens / tokens_per_step)
    return max(10, min(fit, passes))


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


def sample_prompt(data_dir: Path, tokenizer_path: Path, tokens: int = 8) -> str:
    """The start of the validation text (its first `tokens` tokens, special tokens left out): a prompt in the
    corpus's own style."""
    import numpy as np

    from lmkit.tokenizer.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(tokenizer_path)
    specials = set(tokenizer.special_ids.values())
    ids = [int(i) for i in np.load(data_dir / "val.npy", mmap_mode="r")[: tokens + 1] if int(i) not in specials]
    return tokenizer.decode(ids[:tokens])


def sample_text(checkpoint: Path, prompt: str = SAMPLE_PROMPT) -> str:
    """The prompt and a continuation sampled from `checkpoint` with the SAMPLE settings."""
    from lmkit.checkpoint import load_model_and_tokenizer
    from lmkit.generate import generate

    model, tokenizer = load_model_and_tokenizer(checkpoint, device="cpu")
    return prompt + generate(model, tokenizer, prompt, **SAMPLE).text


def next_commands(out_dir: Path, own_corpus: bool = False) -> list[str]:
    """What to run next: this run's checkpoint and config, then (after the bundled corpus) the same path on the
    user's own corpus, step by step."""
    prompt = "..." if own_corpus else "JULIET:"
    this_run = [
        f'lmkit generate {out_dir} --prompt "{prompt}" --max-new-tokens 200',
        f"lmkit ckpt info {out_dir}/last.pt",
        f"lmkit runs plot {out_dir} --out {out_dir}/curve.png",
        f"lmkit train --config {out_dir}/run.toml --set train.out_dir={out_dir}-2    # again, or after editing it",
    ]
    if own_corpus:
        return this_run
    return [
        *this_run,
        "",
        "# your own text in one command: lmkit quickstart --corpus my.txt --minutes 10 --out runs/my",
        "# or step by step, for my.txt with documents separated by <|endoftext|>:",
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
    corpus: Sequence[str | os.PathLike] = (),
    steps: int | None = None,
    minutes: float | None = None,
    vocab_size: int | None = None,
    overrides: list[str] = (),
    progress: bool = True,
    report: Report | None = None,
) -> QuickstartResult:
    """Run the whole path on the bundled corpus, or on the files, folders and globs of `corpus`, into `out_dir`
    and return what it made and measured.

    Steps: `steps`, else as many as fit `minutes` (see the module docstring; 3 minutes by default for a
    user's corpus), else 300 on the bundled corpus. `vocab_size` defaults to 2000, or for a user's corpus to
    a size that grows with it. `overrides` are `table.key=value` strings applied to the run config, as `lmkit
    train --set` applies them. `report(stage, facts)` is called as each stage ends ("tokenizer", "encode",
    "config", "train", "sample"; "interrupted" if Ctrl-C stopped training), so a caller can show progress.
    InputError for an `out_dir` that already holds a run, a corpus that cannot be read, a vocabulary too
    small, an invalid override, or both `steps` and `minutes`; nothing is written then.
    """
    from lmkit.tokenizer.sources import find_corpus
    from lmkit.training.config import apply_overrides, validate_config

    out_dir = Path(out_dir)
    source = find_corpus(corpus) if corpus else None
    vocab_size = vocab_size or (vocab_size_for(source) if source is not None else DEFAULT_VOCAB_SIZE)
    _check_inputs(out_dir, vocab_size, steps, minutes)
    if minutes is None and steps is None and source is not None:
        minutes = DEFAULT_MINUTES

    def config_for(run_steps: int) -> RunConfig:
        raw = run_config_dict(out_dir, vocab_size, run_steps)
        apply_overrides(raw, list(overrides))
        return validate_config(raw, "quickstart config", list(overrides))

    config_for(steps or DEFAULT_STEPS)  # validated before any work, so a bad override costs nothing
    created = not out_dir.exists()
    try:
        return _run(out_dir, source, steps, minutes, vocab_size, config_for, progress, report)
    except InputError:  # found only once the corpus is read (too small, say): leave nothing half-made
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise


def _run(
    out_dir: Path,
    source: Corpus | None,
    steps: int | None,
    minutes: float | None,
    vocab_size: int,
    config_for: Callable[[int], RunConfig],
    progress: bool,
    report: Report | None,
) -> QuickstartResult:
    """The quickstart's stages, once its inputs are checked (see run_quickstart)."""
    from lmkit.checkpoint import METRICS_FILE
    from lmkit.training.config import to_toml
    from lmkit.training.loop import train_from_files

    tell = report or (lambda stage, facts: None)
    seconds: dict[str, float] = {}
    start = began = time.perf_counter()

    data_dir = out_dir / "data"
    if source is None:
        _write_splits(data_dir)
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
    tell("tokenizer", _train_tokenizer(source or data_dir / "train.txt", out_dir, vocab_size, progress))
    start = _timed(seconds, "tokenizer", start)
    encoded = _encode_splits(data_dir, out_dir / "tokenizer.json", progress, source)
    baseline = _val_entropy(data_dir)
    tell("encode", {**encoded, "unigram entropy (nats)": baseline})
    start = _timed(seconds, "encode", start)

    context = config_for(DEFAULT_STEPS).model.context_length
    if min(encoded.values()) <= context:
        raise InputError(
            f"the corpus is too small: {encoded['train tokens'] + encoded['val tokens']:,} tokens, where its "
            f"validation tenth alone needs more than the context of {context}; give more text"
        )
    if minutes is not None:
        probe = config_for(DEFAULT_STEPS)
        step_seconds = seconds_per_step(probe)
        left = minutes * 60 - (time.perf_counter() - began)
        steps = steps_for_budget(left, step_seconds, encoded["train tokens"], probe.tokens_per_step)
        tell("budget", {"minutes": minutes, "seconds per step": step_seconds, "steps": steps})
    config = config_for(steps or DEFAULT_STEPS)
    prompt = SAMPLE_PROMPT if source is None else sample_prompt(data_dir, out_dir / "tokenizer.json")
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

    sample = sample_text(result.checkpoint, prompt)
    tell("sample", {"prompt": prompt, "text": sample, **SAMPLE})
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


def _val_entropy(data_dir: Path) -> float:
    import numpy as np

    return unigram_entropy(np.load(data_dir / "val.npy", mmap_mode="r"))
