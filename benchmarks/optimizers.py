"""AdamW vs Muon on Tiny Shakespeare: validation loss for equal steps and tokens, steps to AdamW's final
loss, and time per step, measured side by side.

Usage: python benchmarks/optimizers.py [--steps 300] [--seeds 3] [--eval-every 10] [--threads 1]
                                       [--adamw-lrs 3e-3,6e-3,1.2e-2] [--muon-lrs 6e-3,1.2e-2,2.4e-2]

The data: the bundled Tiny Shakespeare as bytes (vocabulary 256, 90/10 train/validation split). The model:
quickstart's width and depth (d_model 128, 4 layers, 4 heads), context 64, batch 16, float32 on the CPU;
warmup 5% then cosine to lr/10, weight decay 0.1, clipping at 1.0, the same for both optimizers.

1. lr sweep, seed 0: AdamW over --adamw-lrs; then Muon over --muon-lrs (its AdamW family, the embeddings,
   LM head and norm gains, at AdamW's best lr). Best = lowest final validation loss.
2. Each optimizer at its best lr for --seeds seeds (0, 1, ...; seed 0 runs again, paired for timing).
   Prints the final validation loss (mean ± half the spread, min to max), and the first evaluated step
   at which each run's validation loss reaches AdamW's mean final loss.
3. Time per step: within each seed the AdamW and Muon runs are stepped alternately in one process (step i
   of one, then step i of the other), so load on the machine hits both alike; the ratio is of the median
   step times over all their steps, and optimizer.step() is timed on its own as well (Muon's extra cost
   lives there; on a loaded machine it is a steadier figure than the difference of whole steps).
   Evaluation is not timed. Muon's extra work (five Newton-Schulz steps
   per matrix) does not grow with the batch while the step's does, so the ratio is measured again, the
   same way, for --timing-steps steps at quickstart's full batch (32 sequences of 128 tokens).

The validation loss is over the same 8 fixed batches at every evaluation (8 x 16 x 64 tokens).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import lmkit
from lmkit.tokenizer.formats import save_tokenizer
from lmkit.training.config import validate_config
from lmkit.training.loop import Trainer

SHAKESPEARE = Path(lmkit.__file__).parent / "data" / "tinyshakespeare.txt"
MODEL = {"vocab_size": 256, "context_length": 64, "d_model": 128, "num_layers": 4, "num_heads": 4}
BATCH = 16
QUICKSTART_BATCH, QUICKSTART_CONTEXT = 32, 128


@dataclass
class Curve:
    """One run: validation loss at each evaluated step, and the seconds of each training step."""

    name: str
    lr: float
    seed: int
    val: dict[int, float] = field(default_factory=dict)
    step_seconds: list[float] = field(default_factory=list)
    optimizer_seconds: list[float] = field(default_factory=list)  # optimizer.step() alone, within each step

    @property
    def final(self) -> float:
        return self.val[max(self.val)]

    def first_step_at_or_below(self, target: float) -> int | None:
        return next((step for step in sorted(self.val) if self.val[step] <= target), None)


def _write_data(folder: Path) -> dict[str, str]:
    save_tokenizer(folder / "tokenizer.json", {i: bytes([i]) for i in range(256)}, [], [])
    ids = np.frombuffer(SHAKESPEARE.read_bytes(), dtype=np.uint8).astype(np.uint16)
    split = len(ids) * 9 // 10
    np.save(folder / "train.npy", ids[:split])
    np.save(folder / "val.npy", ids[split:])
    return {
        "train": str(folder / "train.npy"),
        "val": str(folder / "val.npy"),
        "tokenizer": str(folder / "tokenizer.json"),
    }


def _trainer(
    data: dict,
    out: Path,
    steps: int,
    seed: int,
    lr: float,
    muon_lr: float | None,
    batch: int = BATCH,
    context: int = 64,
) -> Trainer:
    optim = {"lr": lr, "warmup_steps": max(1, steps // 20), "weight_decay": 0.1, "grad_clip": 1.0}
    if muon_lr is not None:
        optim.update(name="muon", muon_lr=muon_lr)
    train = {"batch_size": batch, "steps": steps, "seed": seed, "device": "cpu", "dtype": "float32"}
    train.update(eval_batches=8, out_dir=str(out))
    model = {**MODEL, "context_length": context}
    return Trainer(validate_config({"data": data, "model": model, "optim": optim, "train": train}, "benchmark"))


def _time_optimizer(trainer: Trainer, curve: Curve) -> None:
    """Record the seconds of each of the trainer's optimizer steps in `curve`."""
    step = trainer.optimizer.step

    def timed_step(*args: object, **kwargs: object) -> object:
        start = time.perf_counter()
        result = step(*args, **kwargs)
        curve.optimizer_seconds.append(time.perf_counter() - start)
        return result

    trainer.optimizer.step = timed_step


def _run_together(trainers: list[Trainer], curves: list[Curve], steps: int, eval_every: int) -> None:
    """Step the trainers alternately, timing each step; evaluate each every `eval_every` steps and at the end."""
    for trainer, curve in zip(trainers, curves, strict=True):
        _time_optimizer(trainer, curve)
    for step in range(1, steps + 1):
        for trainer, curve in zip(trainers, curves, strict=True):
            start = time.perf_counter()
            trainer.train_step()
            curve.step_seconds.append(time.perf_counter() - start)
            if step % eval_every == 0 or step == steps:
                curve.val[step] = trainer.evaluate()


def _step_ratio(adamw: list[Curve], muon: list[Curve]) -> tuple[float, float, float]:
    """Median seconds per step of the AdamW runs and of the Muon runs, and Muon's over AdamW's."""
    adamw_step = statistics.median(s for c in adamw for s in c.step_seconds)
    muon_step = statistics.median(s for c in muon for s in c.step_seconds)
    return adamw_step, muon_step, muon_step / adamw_step


def _print_step_times(label: str, adamw: list[Curve], muon: list[Curve], threads: int) -> None:
    adamw_step, muon_step, ratio = _step_ratio(adamw, muon)
    adamw_opt = statistics.median(s for c in adamw for s in c.optimizer_seconds)
    muon_opt = statistics.median(s for c in muon for s in c.optimizer_seconds)
    print(
        f"time per step, {label}, median, interleaved, {threads} thread(s): adamw {adamw_step * 1e3:.1f} ms, "
        f"muon {muon_step * 1e3:.1f} ms, muon/adamw {ratio:.3f}; of which optimizer.step(): adamw "
        f"{adamw_opt * 1e3:.1f} ms, muon {muon_opt * 1e3:.1f} ms"
    )


def _time_at_quickstart_batch(data: dict, out: Path, steps: int, lr: float, muon_lr: float, threads: int) -> None:
    """Step AdamW and Muon alternately at quickstart's batch and print their step times."""
    timed = [Curve("adamw", lr, 0), Curve("muon", muon_lr, 0)]
    shape = (QUICKSTART_BATCH, QUICKSTART_CONTEXT)
    trainers = [_trainer(data, out / name, steps, 0, lr, mlr, *shape) for name, mlr in (("a", None), ("m", muon_lr))]
    _run_together(trainers, timed, steps, steps + 1)
    label = f"batch {QUICKSTART_BATCH} x {QUICKSTART_CONTEXT} (quickstart), {steps} steps each"
    _print_step_times(label, timed[:1], timed[1:], threads)


def _spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.4f} ± {(max(values) - min(values)) / 2:.4f} ({min(values):.4f} to {max(values):.4f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a busy machine)")
    parser.add_argument("--adamw-lrs", default="3e-3,6e-3,1.2e-2")
    parser.add_argument("--muon-lrs", default="6e-3,1.2e-2,2.4e-2")
    parser.add_argument("--timing-steps", type=int, default=20, help="interleaved steps at quickstart's batch")
    parser.add_argument(
        "--timing-only", action="store_true", help="only the quickstart-batch timing, at the first lr of each list"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = args.steps
    with tempfile.TemporaryDirectory() as tmp:
        data = _write_data(Path(tmp))
        if args.timing_only:
            lr, muon_lr = float(args.adamw_lrs.split(",")[0]), float(args.muon_lrs.split(",")[0])
            _time_at_quickstart_batch(data, Path(tmp), args.timing_steps, lr, muon_lr, args.threads)
            return
        runs = iter(range(10**6))

        def new(lr: float, seed: int, muon_lr: float | None = None) -> Trainer:
            return _trainer(data, Path(tmp) / f"run{next(runs)}", steps, seed, lr, muon_lr)

        print(f"model {MODEL}, batch {BATCH}, {steps} steps, {BATCH * 64 * steps:,} tokens per run")
        adamw_sweep = []
        for lr in map(float, args.adamw_lrs.split(",")):
            adamw_sweep.append(Curve("adamw", lr, 0))
            _run_together([new(lr, 0)], adamw_sweep[-1:], steps, args.eval_every)
            print(f"sweep adamw lr {lr:g}: final val loss {adamw_sweep[-1].final:.4f}")
        best_adamw = min(adamw_sweep, key=lambda c: c.final)
        muon_sweep = []
        for muon_lr in map(float, args.muon_lrs.split(",")):
            muon_sweep.append(Curve("muon", muon_lr, 0))
            _run_together([new(best_adamw.lr, 0, muon_lr)], muon_sweep[-1:], steps, args.eval_every)
            print(
                f"sweep muon muon_lr {muon_lr:g} (adamw family lr {best_adamw.lr:g}): final {muon_sweep[-1].final:.4f}"
            )
        best_muon = min(muon_sweep, key=lambda c: c.final)

        adamw_runs, muon_runs = [], []
        for seed in range(args.seeds):
            pair = [Curve("adamw", best_adamw.lr, seed), Curve("muon", best_muon.lr, seed)]
            trainers = [new(best_adamw.lr, seed), new(best_adamw.lr, seed, best_muon.lr)]
            _run_together(trainers, pair, steps, args.eval_every)  # seed 0 again, for interleaved timing
            adamw_runs.append(pair[0])
            muon_runs.append(pair[1])
            print(f"seed {seed}: adamw {pair[0].final:.4f}, muon {pair[1].final:.4f}")

        _print_summary(adamw_runs, muon_runs, best_adamw.lr, best_muon.lr, steps, args.threads)
        _time_at_quickstart_batch(data, Path(tmp), args.timing_steps, best_adamw.lr, best_muon.lr, args.threads)


def _print_summary(
    adamw_runs: list[Curve], muon_runs: list[Curve], lr: float, muon_lr: float, steps: int, threads: int
) -> None:
    """Final losses, steps to AdamW's mean final loss, and the step times of the paired runs."""
    target = statistics.fmean(c.final for c in adamw_runs)
    print(f"\nAdamW lr {lr:g}; Muon muon_lr {muon_lr:g} with lr {lr:g} for the rest")
    print(f"{'optimizer':<10} {'final val loss (mean ± half-spread, range)':<48} steps to AdamW's final {target:.4f}")
    for name, curves in (("adamw", adamw_runs), ("muon", muon_runs)):
        reached = [c.first_step_at_or_below(target) for c in curves]
        shown = ", ".join("never" if r is None else str(r) for r in reached)
        print(f"{name:<10} {_spread([c.final for c in curves]):<48} {shown} (of {steps})")
    muon_reached = [r for r in (c.first_step_at_or_below(target) for c in muon_runs) if r is not None]
    if len(muon_reached) == len(muon_runs):
        print(f"Muon reaches AdamW's final loss at {statistics.fmean(muon_reached) / steps:.0%} of the steps (mean)")
    _print_step_times(f"batch {BATCH} x 64 (the runs above)", adamw_runs, muon_runs, threads)


if __name__ == "__main__":
    main()
