"""What clusters and disks do to a run: SIGTERM, kill -9, full disks, two runs in one folder, signals to the
tokenizer's worker processes (docs/reliability.md lists each fault with its test here)."""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SHAKESPEARE, write_tiny_run

import lmkit.fileio
from lmkit.cli.app import app
from lmkit.tokenizer.formats import save_tokenizer
from lmkit.training.checkpoint import read_checkpoint
from lmkit.training.runlock import LOCK_FILE

pytestmark = pytest.mark.usefixtures("one_thread")

ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


# --- processes ------------------------------------------------------------------------------------------


@pytest.fixture
def processes():
    """Start `lmkit` commands in their own process groups; whatever is left of them is killed at the end."""
    started: list[subprocess.Popen] = []

    def start(*args: str) -> subprocess.Popen:
        command = [sys.executable, "-m", "lmkit", *args]
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()


def wait_for(condition, timeout: float = 60.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(line) for line in found.split()]


def running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie, dead but not yet reaped by whoever adopted it, is not)."""
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    return bool(state) and not state.startswith("Z")


def metric_lines(out_dir: Path) -> list[dict]:
    path = out_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def train_table(out_dir: Path, steps: int = 100_000, ckpt_every: int = 100_000) -> str:
    return (
        f'batch_size = 4\nsteps = {steps}\nlog_every = 1\neval_every = 100000\neval_batches = 1\n'
        f'ckpt_every = {ckpt_every}\ndevice = "cpu"\nout_dir = "{out_dir}"\n'
    )


def same_weights(a: Path, b: Path) -> bool:
    first, second = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    return first["iteration"] == second["iteration"] and all(
        torch.equal(first["model"][name], second["model"][name]) for name in first["model"]
    )


def losses(out_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in metric_lines(out_dir) if r["event"] == "train"]


# --- SIGTERM ----------------------------------------------------------------------------------------------


def test_sigterm_finishes_the_step_saves_exits_143_and_resumes_bitwise(runner, tmp_path, processes):
    config = write_tiny_run(tmp_path, train_table(tmp_path / "run"))
    proc = processes("train", "--quiet", "--config", str(config))
    wait_for(lambda: len(metric_lines(tmp_path / "run")) >= 3, what="three logged steps")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "resume with: lmkit train --resume" in stderr and "Traceback" not in stderr
    stopped = read_checkpoint(tmp_path / "run" / "last.pt")["iteration"]
    assert stopped == metric_lines(tmp_path / "run")[-1]["step"] >= 3

    until = str(stopped + 4)
    resumed = runner.invoke(app, ["train", "--quiet", "--resume", str(tmp_path / "run" / "last.pt"), "--until-step", until])
    assert resumed.exit_code == 0, resumed.output
    straight = runner.invoke(
        app, ["train", "--quiet", "--config", str(config), "--set", f'train.out_dir="{tmp_path / "straight"}"',
              "--until-step", until],
    )  # fmt: skip
    assert straight.exit_code == 0, straight.output
    assert losses(tmp_path / "run") == losses(tmp_path / "straight")
    assert same_weights(tmp_path / "run" / "last.pt", tmp_path / "straight" / "last.pt")


@pytest.mark.slow
@pytest.mark.parametrize("target", ["torchrun", "one rank"])
def test_sigterm_under_torchrun_stops_both_ranks_after_the_step_and_resumes_bitwise(
    runner, tmp_path, processes, target
):
    config = write_tiny_run(tmp_path, train_table(tmp_path / "run"))
    proc = processes("train", "--nproc", "2", "--quiet", "--config", str(config))
    wait_for(lambda: len(metric_lines(tmp_path / "run")) >= 3, timeout=120, what="three logged steps")
    ranks = children(proc.pid)
    assert len(ranks) == 2
    os.kill(proc.pid if target == "torchrun" else ranks[-1], signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert not any(map(running, ranks))
    stopped = read_checkpoint(tmp_path / "run" / "last.pt")["iteration"]
    assert stopped == metric_lines(tmp_path / "run")[-1]["step"] >= 3, stderr
    assert "resume with: lmkit train --resume" in stderr

    until = str(stopped + 3)
    resumed = runner.invoke(app, ["train", "--quiet", "--resume", str(tmp_path / "run" / "last.pt"), "--until-step", until])
    assert resumed.exit_code == 0, resumed.output
    straight = runner.invoke(
        app, ["train", "--quiet", "--config", str(config), "--set", f'train.out_dir="{tmp_path / "straight"}"',
              "--until-step", until],
    )  # fmt: skip
    assert straight.exit_code == 0, straight.output
    # Two processes sum their halves of the batch in another order than one: equal to float rounding.
    assert [s for s, _ in losses(tmp_path / "run")] == [s for s, _ in losses(tmp_path / "straight")]
    assert [loss for _, loss in losses(tmp_path / "run")] == pytest.approx(
        [loss for _, loss in losses(tmp_path / "straight")], rel=1e-5
    )
