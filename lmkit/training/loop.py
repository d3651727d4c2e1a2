"""The training loop behind `lmkit train`: set-up, steps, evaluation, checkpoints, exact resume.

One step: the learning rate from the schedule; `grad_accum` micro-batches drawn by get_batch from a
dedicated generator (its state is checkpointed, so a resumed run draws the very batches the unbroken run
would have), each next one drawn while the device computes the current one; forward under autocast,
cross-entropy, backward; gradient clipping; the optimizer (AdamW, or Muon with AdamW: lmkit.training.muon),
whose update is skipped on the device when the loss or the gradient norm is not finite. The loss and the
gradient norm stay on the device: the host reads them (waiting for the device) only when a line is logged,
before an evaluation or a checkpoint, and at the end; a read that finds a skipped step stops the run, naming
that step, before anything is saved. Every `log_every` steps a "train" line goes to metrics.jsonl (with the
MFU where the device's peak is known, see lmkit.training.mfu), every `eval_every` steps the loss over a fixed
set of validation batches and its bits per byte (`best.pt` when it improves), every `ckpt_every` steps and
at the end `last.pt`.

Under torchrun (several processes, see lmkit.training.distributed and docs/distributed.md) the model runs in
DistributedDataParallel or sharded by FSDP2 (train.parallel), each process trains on its slice of every
global batch, losses are averaged over the processes, and only rank 0 logs and writes files.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmkit.bpb import bits_per_byte, count_bytes, token_byte_lengths
from lmkit.chat import add_chat_tokens, has_chat_tokens
from lmkit.checkpoint import (
    BEST_CHECKPOINT,
    CONFIG_FILE,
    LAST_CHECKPOINT,
    METRICS_FILE,
    load_weights,
    read_checkpoint,
    write_checkpoint,
)
from lmkit.device import autocast, resolve_autocast_dtype, resolve_device, use_tf32
from lmkit.errors import InputError
from lmkit.fileio import atomic_write
from lmkit.model import TransformerLM
from lmkit.model.documents import Documents
from lmkit.threads import apply_threads
from lmkit.tokenizer import Tokenizer
from lmkit.training.chat_data import grown_vocabulary, load_chat_batches
from lmkit.training.config import RunConfig, apply_overrides, load_config, to_toml, validate_config
from lmkit.training.console_log import TrainingConsole, training_console
from lmkit.training.data import (
    check_same_shards,
    check_shards,
    get_batch,
    load_shards,
    shard_order,
    to_device,
    validation_batches,
)
from lmkit.training.distributed import (
    Distributed,
    gradient_sync,
    local_numel,
    shard_like_parameters,
    whole_state,
)
from lmkit.training.loss import IGNORE, cross_entropy
from lmkit.training.metrics import MetricsLog, SinkFactory, process_facts
from lmkit.training.mfu import device_peak_tflops, mfu, training_flops_per_token
from lmkit.training.muon import build_optimizer, set_learning_rates
from lmkit.training.optim import clip_grad_norm
from lmkit.training.packing import DocumentPacker
from lmkit.training.preflight import check_resources, check_run, check_same_model
from lmkit.training.runlock import run_folder
from lmkit.training.samples import record_sample, training_sample
from lmkit.training.schedule import get_lr_cosine_schedule
from lmkit.training.signals import StopRequest, stop_on_signals
from lmkit.training.state import restore_rng, rng_state

# Under several processes, how often the ranks agree on whether a signal asks them to stop: each vote is an
# all-reduce the host waits for, so a signal stops every rank within this many steps.
STOP_VOTE_EVERY = 10


class TrainingDiverged(RuntimeError):
    """The loss (or, without loss scaling, the gradient norm) became NaN or infinite at `step` (`loss` is that
    step's); the update of that step was not applied."""

    def __init__(self, message: str, loss: float, step: int) -> None:
        super().__init__(message)
        self.loss, self.step = loss, step


@dataclass
class TrainResult:
    """How a run (or this stretch of it) ended."""

    step: int
    total_steps: int
    tokens_seen: int
    train_loss: float | None
    val_loss: float | None
    best_val_loss: float | None
    elapsed_s: float
    tokens_per_s: float | None
    checkpoint: Path
    interrupted: bool  # by Ctrl-C or SIGTERM; with step < total_steps and not interrupted, --until-step stopped it
    parameters_per_process: int  # the model's parameters each process holds: all of them, but a share under fsdp
    mfu: float | None = None  # model FLOPs utilisation of the last logged interval (None without a known peak)
    threads: int = 1  # CPU threads torch used (lmkit.threads)
    stop_signal: int | None = None  # the signal that interrupted it (signal.SIGINT or signal.SIGTERM)
    steps_run: int = 0  # steps trained by this call (0 when a finished run was resumed)


def _read_tokenizer(config: RunConfig) -> str:
    """The tokenizer as tokenizer.json text (data.tokenizer may also name a folder holding tokenizer.json or
    GPT-2's vocab.json + merges.txt), after checking its ids fit the model's vocabulary."""
    from lmkit.tokenizer.tokenizer import TOKENIZER_FILE, Tokenizer

    path = Path(config.data.tokenizer)
    tokenizer = Tokenizer.load(path)
    grown = config.data.format == "chat" and not has_chat_tokens(tokenizer)
    if grown:  # fine-tuning a base model on conversations: the template's tokens join its vocabulary
        tokenizer = add_chat_tokens(tokenizer)
    if config.model.vocab_size < tokenizer.vocab_size:
        with_chat = " with the chat template's 2 tokens" if grown else ""
        raise InputError(
            f"model.vocab_size ({config.model.vocab_size}) is smaller than the tokenizer's vocabulary{with_chat} "
            f"({tokenizer.vocab_size} ids from {path})"
        )
    if grown:
        return tokenizer.to_json()
    stored = path / TOKENIZER_FILE if path.is_dir() else path
    # A tokenizer.json is kept as written; GPT-2's two files are stored in the same layout.
    return stored.read_text(encoding="utf-8") if stored.is_file() else tokenizer.to_json()


def _val_bytes_per_token(tokenizer_json: str, val_batches: list, vocab_size: int) -> float:
    """Text bytes per scored token of the validation windows, or of the trained targets of fine-tuning's
    (ids, targets) batches (special tokens count 0), to turn the validation loss into bits per byte."""
    from lmkit.tokenizer.formats import from_hf_json

    vocab, _, special_tokens = from_hf_json(json.loads(tokenizer_json), source="the run's tokenizer")
    if isinstance(val_batches[0], tuple):
        targets = torch.cat([targets[targets != IGNORE] for _, targets in val_batches]).numpy()
    else:
        targets = torch.cat([window[:, 1:] for window in val_batches]).numpy().ravel()
    lengths = token_byte_lengths(vocab, special_tokens, vocab_size)
    return count_bytes(targets, lengths, "validation data") / len(targets)


def _separator_id(tokenizer: Tokenizer) -> int:
    """The id of the tokenizer's first special token, which ends each document; InputError without one."""
    if not tokenizer.special_tokens:
        raise InputError(
            'train.batching = "documents" and train.document_mask need a tokenizer with a special token that '
            "ends each document (<|endoftext|>); this one has none"
        )
    return tokenizer.special_ids[tokenizer.special_tokens[0]]


def _load_initial_weights(config: RunConfig, model: TransformerLM) -> None:
    """Load train.init_from's weights into `model` (fine-tuning), after checking it is the same model."""
    path = config.train.init_from
    checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint.get("config"), dict):
        raise InputError(f"train.init_from {path} holds no model config; was it written by lmkit?")
    state = checkpoint["model"]
    if config.data.format == "chat":  # a base model's vocabulary grows by the chat template's tokens
        state = grown_vocabulary(state, config.model.vocab_size)
        checkpoint = {**checkpoint, "config": {**checkpoint["config"], "model": {
            **checkpoint["config"].get("model", {}), "vocab_size": config.model.vocab_size}}}  # fmt: skip
    check_same_model(config, checkpoint, str(path), action="start from")
    load_weights(model, state, str(path))


class Trainer:
    """One training run: built from a validated config (and a checkpoint to resume), run with `run()`."""

    def __init__(self, config: RunConfig, checkpoint: dict[str, Any] | None = None, resume_name: str = "") -> None:
        self.config = config
        self.out_dir = Path(config.train.out_dir)
        self.total_steps = config.total_steps
        check_run(config, checkpoint, resume_name)
        self.threads = apply_threads(config.train.threads)
        self.dist = Distributed.from_env()
        self.row_share = self.dist.row_share(config.train.batch_size)  # this process's share of every global batch
        self.device = self.dist.device_for(resolve_device(config.train.device, "train.device"))
        self.autocast_dtype = resolve_autocast_dtype(config.train.dtype, self.device)
        check_resources(config, self.dist, self.device, self.autocast_dtype)
        # float16 gradients underflow: the loss is scaled up before backward and the gradients back down
        # before clipping; a step whose gradients overflowed is skipped and the scale halved.
        self.scaler = torch.amp.GradScaler(self.device.type) if self.autocast_dtype == torch.float16 else None
        self.peak_tflops = device_peak_tflops(self.device, self.autocast_dtype, config.train.peak_tflops)
        self.flops_per_token = training_flops_per_token(config.model)
        self.mfu: float | None = None
        use_tf32(self.device)
        self._load_data(checkpoint)
        torch.manual_seed(config.train.seed)
        self.batch_rng = torch.Generator().manual_seed(config.train.seed)
        # The batch drawn ahead for the next micro-step, and the sampler's state before it was drawn (what a
        # checkpoint keeps, so a resumed run draws that batch again).
        self._next_batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self._batches_state = self.batch_rng.get_state()
        self.model = TransformerLM(config.model).to(self.device)
        if checkpoint is not None:
            load_weights(self.model, checkpoint["model"], resume_name)  # whole tensors: before any sharding
        elif config.train.init_from is not None:
            _load_initial_weights(config, self.model)
        self.dist.start(self.device)
        # DistributedDataParallel, or sharded in place (FSDP), under several processes; then the optimizer,
        # over the parameters as they now are.
        self.forward = self.dist.wrap(
            self.model, self.device, config.train.parallel, self.autocast_dtype, config.train.compile
        )
        self.optimizer = build_optimizer(self.model, config.optim)
        self.step, self.tokens_seen, self.elapsed_before = 0, 0, 0.0
        self.train_loss: float | None = None
        self.val_loss: float | None = None
        self.best_val_loss: float | None = None
        if checkpoint is not None:
            self._restore(checkpoint)
        self._figures = _StepFigures(self.device, self.step)
        self.grad_norm: float | None = None
        self._throughput = _Throughput()
        self.tokens_per_s: float | None = None
        self._started = time.perf_counter()

    def _load_data(self, checkpoint: dict[str, Any] | None) -> None:
        data, model = self.config.data, self.config.model
        self.packer, self.separator_id, self.chat = None, None, None
        if data.format == "chat":
            self._load_conversations(checkpoint)
            return
        self.train_tokens = load_shards(data.train, "train data")
        val_tokens = load_shards(data.val, "validation data")
        check_shards(self.train_tokens, model.vocab_size, model.context_length, "train data")
        check_shards(val_tokens, model.vocab_size, model.context_length, "validation data")
        if checkpoint is not None:
            check_same_shards(shard_order(self.train_tokens), checkpoint.get("train_shards"), data.train)
        # A resumed run keeps the tokenizer it started with (the file may have moved since).
        self.tokenizer_json = checkpoint["tokenizer_json"] if checkpoint else _read_tokenizer(self.config)
        self.val_batches = validation_batches(
            val_tokens, self.config.train.batch_size, model.context_length, self.config.train.eval_batches
        )
        self.val_bytes_per_token = _val_bytes_per_token(self.tokenizer_json, self.val_batches, model.vocab_size)
        train = self.config.train
        documents = train.batching == "documents" or train.document_mask
        self.separator_id = _separator_id(self.tokenizer) if documents else None
        if train.batching == "documents":
            self.packer = DocumentPacker(self.train_tokens, self.separator_id, model.context_length)

    @functools.cached_property
    def tokenizer(self) -> Tokenizer:
        """The run's tokenizer, built once from its tokenizer.json text when first needed."""
        return Tokenizer.from_json(self.tokenizer_json)

    def _load_conversations(self, checkpoint: dict[str, Any] | None) -> None:
        """Fine-tuning data: the run's conversations packed into rows (lmkit.training.chat_data)."""
        self.train_tokens = None
        self.tokenizer_json = checkpoint["tokenizer_json"] if checkpoint else _read_tokenizer(self.config)
        self.chat = load_chat_batches(self.config, self.tokenizer)
        self.val_batches = self.chat.val_batches
        vocab_size = self.config.model.vocab_size
        self.val_bytes_per_token = _val_bytes_per_token(self.tokenizer_json, self.val_batches, vocab_size)

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        """Everything but the weights (loaded before sharding): optimizer state, generators, counters."""
        self.optimizer.load_state_dict(shard_like_parameters(checkpoint["optimizer"], self.optimizer))
        if self.scaler is not None and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        restore_rng(checkpoint["rng"], self.batch_rng)
        self._batches_state = self.batch_rng.get_state()
        self.step, self.tokens_seen = checkpoint["iteration"], checkpoint["tokens_seen"]
        self.elapsed_before = checkpoint["elapsed_s"]
        self.train_loss, self.val_loss = checkpoint["train_loss"], checkpoint["val_loss"]
        self.best_val_loss = checkpoint["best_val_loss"]

    def lr_at(self, step: int) -> float:
        """The scheduled learning rate for the step that starts after `step` steps."""
        optim = self.config.optim
        return get_lr_cosine_schedule(step, optim.lr, optim.final_lr, optim.warmup_steps, self.total_steps)

    def train_step(self) -> tuple[torch.Tensor, float, torch.Tensor]:
        """One optimizer step over grad_accum micro-batches; returns (loss, lr, grad norm), the loss and the norm
        as tensors on the device (reading them waits for the device: see `read`).

        Where the loss or the gradient norm is not finite the update is skipped on the device (with float16
        loss scaling an overflowing gradient is the scaler's to skip); the next `read` stops the run.
        """
        train = self.config.train
        lr = self.lr_at(self.step)
        set_learning_rates(self.optimizer, self.config.optim, lr / self.config.optim.lr)
        loss_sum = torch.zeros((), device=self.device)
        batch = self._next_batch or self._draw_batch()
        for micro in range(train.grad_accum):
            inputs, targets = batch
            with gradient_sync(self.forward, sync=micro == train.grad_accum - 1):
                with autocast(self.device, self.autocast_dtype):
                    loss = cross_entropy(self._logits(inputs), targets)
                # Drawn while the device works through the forward pass and the backward one.
                self._batches_state = self.batch_rng.get_state()
                batch = self._draw_batch()
                micro_loss = loss / train.grad_accum
                (micro_loss if self.scaler is None else self.scaler.scale(micro_loss)).backward()
            loss_sum += loss.detach()
        self._next_batch = batch
        mean_loss = self.dist.mean(loss_sum) / train.grad_accum
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = clip_grad_norm(self.model.parameters(), self.config.optim.grad_clip or math.inf)
        keep = self._figures.record(mean_loss, grad_norm, judge_norm=self.scaler is None)
        for param in self.model.parameters():
            if param.grad is not None:
                param.grad.masked_fill_(keep == 0, 0.0)  # a skipped step's gradients may be NaN; NaN * 0 is NaN
        if self.scaler is None:
            self.optimizer.step(keep=keep)
        else:
            self.scaler.step(self.optimizer, keep=keep)  # the scaler also skips where the gradients overflowed
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += self.config.tokens_per_step
        return mean_loss, lr, grad_norm

    def _draw_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        train = self.config.train
        if self.packer is not None:  # every process draws the whole batch, so the generators stay in step
            return to_device(self.packer.draw(train.batch_size, self.batch_rng)[self.row_share], self.device)
        if self.chat is not None:
            return self._on_device(self.chat.draw(train.batch_size, self.batch_rng))
        context = self.config.model.context_length
        return get_batch(self.train_tokens, train.batch_size, context, self.device, self.batch_rng, self.row_share)

    def _on_device(self, batch: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's rows of a (B, T + 1) window, or of fine-tuning's (ids, targets), as (inputs, targets)
        on the device."""
        if isinstance(batch, torch.Tensor):
            return to_device(batch[self.row_share], self.device)
        ids, targets = batch
        inputs, _ = to_device(ids[self.row_share], self.device)
        return inputs, targets[self.row_share].to(self.device)

    def _logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """The model's logits for `inputs`, its documents kept apart under train.document_mask."""
        if not self.config.train.document_mask:
            return self.forward(inputs)
        return self.forward(inputs, documents=Documents.from_ids(inputs, self.separator_id))

    def read(self) -> None:
        """Wait for the device and take the last step's loss and gradient norm (`train_loss`, `grad_norm`);
        TrainingDiverged, naming the step, if any step since the last read was skipped as not finite."""
        loss, grad_norm, bad = self._figures.read()
        if loss is not None:  # else no step since the start (or the resume): the figures stay as they were
            self.train_loss, self.grad_norm = loss, grad_norm
        if bad is None:
            return
        step, bad_loss, bad_norm = bad
        what = f"the loss is {bad_loss}" if not math.isfinite(bad_loss) else f"the gradient norm is {bad_norm}"
        raise TrainingDiverged(
            f"{what} at step {step}; stopped before applying it "
            f"(the last checkpoint in {self.out_dir} is untouched); try a lower optim.lr or a grad_clip",
            bad_loss,
            step,
        )

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the fixed validation batches (each process evaluates its rows of each batch)."""
        self.model.eval()
        total = torch.zeros((), device=self.device)
        for batch in self.val_batches:
            inputs, targets = self._on_device(batch)
            with autocast(self.device, self.autocast_dtype):
                total += cross_entropy(self._logits(inputs), targets)
        self.model.train()
        return self.dist.mean(total).item() / len(self.val_batches)

    def save(self, name: str, elapsed_s: float) -> Path:
        """Write the run checkpoint `name` in the run folder (every rank gathers, rank 0 alone writes).

        Only last.pt, the one a run resumes from, keeps the optimizer state: AdamW's two moments are twice the
        size of the weights, and best.pt is for sampling, evaluation and export.
        """
        path = self.out_dir / name
        self.read()  # nothing is saved after a skipped step
        model_state, optimizer_state = whole_state(self.model, self.optimizer, keep=self.dist.is_main)
        if not self.dist.is_main:
            return path
        write_checkpoint(
            model_state,
            optimizer_state if name == LAST_CHECKPOINT else None,
            self.step,
            path,
            tokens_seen=self.tokens_seen,
            config=self.config.model_dump(mode="json"),
            tokenizer_json=self.tokenizer_json,
            rng=rng_state(self._batches_state),
            train_shards=shard_order(self.train_tokens) if self.train_tokens is not None else [],
            elapsed_s=elapsed_s,
            lr=self.lr_at(self.step),
            train_loss=self.train_loss,
            val_loss=self.val_loss,
            best_val_loss=self.best_val_loss,
            world_size=self.dist.world_size,
            scaler=None if self.scaler is None else self.scaler.state_dict(),
        )
        return path

    def run(
        self, until_step: int | None = None, show_progress: bool = True, sinks: Sequence[SinkFactory] = ()
    ) -> TrainResult:
        """Train to the configured length (or to `until_step`); Ctrl-C or SIGTERM stops cleanly after the
        current step. The run folder is locked meanwhile (see lmkit.training.runlock).
        `sinks` build, on the process that logs, where else the metrics go (see lmkit.training.metrics).

        metrics.jsonl gets a "start" line (with this process's id) and, however the run ends, an "end" line
        saying how: finished, stopped (--until-step), interrupted, diverged or crashed.
        """
        self._started = time.perf_counter()
        if self.step >= self.total_steps:  # a finished run, resumed: nothing to write, nothing to train
            return self._result(self.step)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with run_folder(self.out_dir) if self.dist.is_main else contextlib.nullcontext():
            return self._run(until_step, show_progress, sinks)

    def _run(self, until_step: int | None, show_progress: bool, sinks: Sequence[SinkFactory]) -> TrainResult:
        main = self.dist.is_main
        built = [sink for make in sinks if (sink := make(self.config)) is not None] if main else []
        if main:
            with atomic_write(self.out_dir / CONFIG_FILE, "w") as handle:
                handle.write(to_toml(self.config))
        last_step = min(self.total_steps, until_step or self.total_steps)
        first_step, self._started = self.step, time.perf_counter()
        log = MetricsLog(self.out_dir / METRICS_FILE, self.step or None, built) if main else _NoMetrics()
        with (
            log as metrics,
            stop_on_signals() as stop,
            training_console(show_progress and main, self.step, last_step) as console,
        ):
            threads = f"{self.threads.count} CPU thread{'s' if self.threads.count > 1 else ''}"
            console.say(f"training on {self.device}, {threads} ({self.threads.reason})")
            metrics.write("start", **self._facts(), **process_facts())
            with self._ending(metrics, stop):
                while self.step < last_step and not (self._vote_due() and self._stopping(stop)):
                    self._train_one(metrics, console)
                if self.step < self.total_steps and self.step % self.config.train.ckpt_every:
                    self.save(LAST_CHECKPOINT, self._elapsed())
            # torchrun stops every rank as soon as one exits with an error (143 after SIGTERM is one): no rank
            # may leave before rank 0 has written the last checkpoint, nor while signals are still deferred.
            self.dist.barrier()
        return self._result(first_step, stop.is_set(), stop.signum)

    def _result(self, first_step: int, interrupted: bool = False, stop_signal: int | None = None) -> TrainResult:
        return TrainResult(
            step=self.step,
            total_steps=self.total_steps,
            tokens_seen=self.tokens_seen,
            train_loss=self.train_loss,
            val_loss=self.val_loss,
            best_val_loss=self.best_val_loss,
            elapsed_s=self._elapsed(),
            tokens_per_s=self.tokens_per_s,
            checkpoint=self.out_dir / LAST_CHECKPOINT,
            interrupted=interrupted,
            parameters_per_process=sum(map(local_numel, self.model.parameters())),
            mfu=self.mfu,
            threads=self.threads.count,
            stop_signal=stop_signal,
            steps_run=self.step - first_step,
        )

    def _train_one(self, metrics: MetricsLog, console: TrainingConsole) -> None:
        """One step, then its logging, evaluation and checkpoint."""
        step_start = time.perf_counter()
        _, lr, _ = self.train_step()
        if self._read_due():
            self.read()  # inside the timed stretch: the step's time is the device's, not only its launch
        self._throughput.add(self.config.tokens_per_step, time.perf_counter() - step_start)
        self._after_step(metrics, console, lr)
        console.step(self.step, self.train_loss, lr, self.tokens_per_s)

    def _read_due(self) -> bool:
        """Whether this step logs, evaluates or saves (each needs the step's figures), or ends the run."""
        train = self.config.train
        due = (train.log_every, train.eval_every, train.ckpt_every)
        return self.step == self.total_steps or any(self.step % every == 0 for every in due)

    def _vote_due(self) -> bool:
        """Whether to check for a stop signal now: every step in one process (it costs nothing), every
        STOP_VOTE_EVERY steps across several."""
        return not self.dist.enabled or self.step % STOP_VOTE_EVERY == 0

    @contextlib.contextmanager
    def _ending(self, metrics: MetricsLog, stop: StopRequest) -> Iterator[None]:
        """Write the run's "end" line as the block leaves, however it leaves (see `run`)."""
        try:
            yield
        except TrainingDiverged as diverged:  # the skipped step's line, so run tracking sees the divergence
            tokens = self.tokens_seen - (self.step - diverged.step) * self.config.tokens_per_step
            metrics.write("train", step=diverged.step, tokens=tokens, time_s=self._elapsed(), loss=diverged.loss)
            metrics.write("end", **self._facts(), status="diverged")
            raise
        except BaseException as exc:  # a second Ctrl-C, an exit from a signal handler, or any failure
            status = "interrupted" if isinstance(exc, KeyboardInterrupt | SystemExit) else "crashed"
            metrics.write("end", **self._facts(), status=status, error=f"{type(exc).__name__}: {exc}"[:500])
            raise
        if self.step >= self.total_steps:
            status = "finished"
        else:
            status = "interrupted" if stop.is_set() else "stopped"
        metrics.write("end", **self._facts(), status=status)

    def _facts(self) -> dict[str, float | int]:
        return {"step": self.step, "tokens": self.tokens_seen, "time_s": self._elapsed()}

    def close(self) -> None:
        """Leave the process group of a multi-process run (nothing to do for one process)."""
        if self.dist.enabled:
            # Freed after its process group is destroyed, the DistributedDataParallel wrapper can hang the
            # process; it sits in reference cycles, so collect it now rather than at some later collection.
            self.forward = self.model
            gc.collect()
            self.dist.stop()

    def _stopping(self, stop: StopRequest) -> bool:
        """Whether Ctrl-C or SIGTERM reached this process or, under several processes, any of them (all stop
        together, reporting the same signal)."""
        signum = self.dist.max(stop.signum or 0, self.device)
        if signum:
            stop.set(signum)
        # Decided by the agreed value alone: a signal landing here after this rank's contribution was sent
        # must not stop this rank while the others carry on (it counts at the next step, on every rank).
        return bool(signum)

    def _elapsed(self) -> float:
        """Wall-clock seconds of training, counting the time before a resume."""
        return round(self.elapsed_before + time.perf_counter() - self._started, 3)

    def _after_step(self, metrics: MetricsLog, console: TrainingConsole, lr: float) -> None:
        """Log, evaluate (saving best.pt on a new best) and checkpoint, each when its interval comes round."""
        train, elapsed = self.config.train, self._elapsed()
        done = self.step == self.total_steps
        facts = {"step": self.step, "tokens": self.tokens_seen, "time_s": elapsed}
        if self.step % train.log_every == 0 or done:
            self.tokens_per_s = self._throughput.rate()
            if self.peak_tflops is not None:
                self.mfu = mfu(self.tokens_per_s, self.flops_per_token, self.peak_tflops, self.dist.world_size)
            metrics.write(
                "train",
                **facts,
                loss=self.train_loss,
                lr=lr,
                grad_norm=self.grad_norm,
                tokens_per_s=self.tokens_per_s,
                **({} if self.mfu is None else {"mfu": self.mfu}),
                **({} if self.packer is None else {"dropped_fraction": self.packer.dropped_fraction}),
            )
            console.logged(self.step, self.train_loss, lr, self.tokens_per_s)
        if self.step % train.eval_every == 0 or done:
            self.val_loss = self.evaluate()
            val_bpb = bits_per_byte(self.val_loss, self.val_bytes_per_token)
            metrics.write("eval", **facts, val_loss=self.val_loss, val_bpb=val_bpb)
            improved = self.best_val_loss is None or self.val_loss < self.best_val_loss
            if improved:
                self.best_val_loss = self.val_loss
            console.evaluated(self.step, self.val_loss, val_bpb, self.best_val_loss)
            if improved:
                self.save(BEST_CHECKPOINT, elapsed)
        if train.sample_every is not None and (self.step % train.sample_every == 0 or done):
            self._sample(console)
        if self.step % train.ckpt_every == 0 or done:
            self.save(LAST_CHECKPOINT, elapsed)

    def _sample(self, console: TrainingConsole) -> None:
        """A sample of the model's text, shown and (by the first process) kept in the run folder."""
        train = self.config.train
        text = training_sample(self.model, self.tokenizer, train.sample_prompt, train.sample_tokens, train.seed)
        if self.dist.is_main:
            record_sample(self.out_dir, self.step, train.sample_prompt, text)
        console.sampled(self.step, train.sample_prompt, text)


class _NoMetrics:
    """The metrics log of every process but rank 0, which alone writes metrics.jsonl."""

    def __enter__(self) -> _NoMetrics:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def write(self, event: str, **fields: object) -> None:
        """Drop the event."""


class _StepFigures:
    """The last step's loss and gradient norm, and the first step since the last read whose loss (or gradient
    norm) was not finite, all kept on the device so that a step needs no host read."""

    def __init__(self, device: torch.device, step: int) -> None:
        self._step = torch.tensor(float(step), device=device)
        self._last = torch.zeros(2, device=device)  # loss, gradient norm
        self._bad = torch.zeros(3, device=device)  # step (0: none), loss, gradient norm
        self._recorded = False  # whether _last holds a step's figures yet

    def record(self, loss: torch.Tensor, grad_norm: torch.Tensor, judge_norm: bool) -> torch.Tensor:
        """Take one step's figures; returns 1.0 (apply the update) or 0.0 (skip it), on the device.
        `judge_norm`: a non-finite gradient norm also stops the run (not with loss scaling, which expects it)."""
        self._step += 1
        figures = torch.stack([loss.float(), grad_norm.float().to(loss.device)])
        finite = torch.isfinite(figures)
        bad = ~finite[0] | (~finite[1] if judge_norm else False)
        first = bad & (self._bad[0] == 0)
        self._bad = torch.where(first, torch.cat([self._step.view(1), figures]), self._bad)
        self._last, self._recorded = figures, True
        return finite.all().float()

    def read(self) -> tuple[float | None, float | None, tuple[int, float, float] | None]:
        """(loss, gradient norm, None or the first bad step's (step, loss, gradient norm)); waits for the device.
        The loss and norm are None before the first step."""
        loss, grad_norm, bad_step, bad_loss, bad_norm = torch.cat([self._last, self._bad]).tolist()
        self._bad.zero_()
        bad = None if bad_step == 0 else (int(bad_step), bad_loss, bad_norm)
        return (loss, grad_norm, bad) if self._recorded else (None, None, bad)


class _Throughput:
    """Tokens per second of training steps alone (evaluation and checkpoints excluded), since the last rate()."""

    def __init__(self) -> None:
        self.tokens, self.seconds = 0, 0.0

    def add(self, tokens: int, seconds: float) -> None:
        self.tokens += tokens
        self.seconds += seconds

    def rate(self) -> float:
        """The rate since the previous call; starts a new interval."""
        rate = self.tokens / self.seconds
        self.tokens, self.seconds = 0, 0.0
        return rate


def train_from_files(
    config_path: str | Path | None,
    overrides: list[str] = (),
    resume: str | Path | None = None,
    until_step: int | None = None,
    show_progress: bool = True,
    sinks: Sequence[SinkFactory] = (),
) -> TrainResult:
    """What `lmkit train` does: read the config (or, resuming without one, the checkpoint's), apply the
    `--set` overrides, and train, resuming from `resume` if given; `sinks` as for `Trainer.run` (`lmkit
    train` passes lmkit.tracking.wandb_log.wandb_sink)."""
    config, checkpoint = resolve_run(config_path, overrides, resume)
    if until_step is not None and until_step <= (checkpoint["iteration"] if checkpoint else 0):
        raise InputError(f"--until-step {until_step} is not after the step the run starts from")
    trainer = Trainer(config, checkpoint, str(resume))
    try:
        return trainer.run(until_step, show_progress, sinks)
    finally:
        trainer.close()


def resolve_run(
    config_path: str | Path | None, overrides: list[str] = (), resume: str | Path | None = None
) -> tuple[RunConfig, dict[str, Any] | None]:
    """The run's validated config (the file's, or resuming without one, the checkpoint's, with the `--set`
    overrides applied) and the checkpoint to resume from (None for a fresh run)."""
    if config_path is None and resume is None:
        raise InputError("give --config run.toml (or --resume CKPT to continue a run)")
    # A run folder given to --resume means where it stopped, not its best step.
    checkpoint = read_checkpoint(resume, folder_means=("last.pt",)) if resume is not None else None
    if checkpoint is not None and "rng" not in checkpoint:
        # Weights without run state (from `lmkit import hf`, say): a new run starts from them, as with init_from.
        if config_path is None:
            raise InputError(
                f"{resume} holds weights but no run state; give --config run.toml to train from its weights "
                "(or set train.init_from)"
            )
        config = load_config(config_path, overrides)
        config.train.init_from = Path(resume)
        return config, None
    if checkpoint is not None and not isinstance(checkpoint.get("config"), dict):
        raise InputError(f"{resume} holds no run config; only checkpoints from `lmkit train` resume")
    if checkpoint is not None and checkpoint.get("optimizer") is None:
        raise InputError(
            f"{resume} holds no optimizer state (best.pt keeps only the weights); resume from the run's last.pt"
        )
    if config_path is not None:
        config = load_config(config_path, overrides)
    else:
        raw = checkpoint["config"]
        apply_overrides(raw, list(overrides))
        config = validate_config(raw, f"config in {resume}", list(overrides))
    return config, checkpoint
