"""What clusters and disks do to a run: SIGTERM, kill -9, full disks, two runs in one folder, signals to the
tokenizer's worker processes (docs/reliability.md lists each fault with its test here)."""

import contextlib
import errno
import json
import multiprocessing
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
from helpers import SHAKESPEARE, assert_input_error, write_tiny_run

import lmkit.fileio
from lmkit.checkpoint import read_checkpoint
from lmkit.cli.app import app
from lmkit.errors import InputError
from lmkit.tokenizer.formats import save_tokenizer
from lmkit.training.runlock import LOCK_FILE

pytestmark = pytest.mark.usefixtures("one_thread")

ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


# --- processes ------------------------------------------------------------------------------------------


@pytest.fixture
def processes():
    """Start `lmkit` commands in their own process groups. At the end whatever is left of them is killed:
    the group, and every process started for them (torchrun starts its ranks in sessions of their own;
    `start.others` takes pids found along the way, which may have lost their parent by then)."""
    started: list[subprocess.Popen] = []

    def start(*args: str) -> subprocess.Popen:
        command = [sys.executable, "-m", "lmkit", *args]
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True
        )
        started.append(proc)
        return proc

    start.others = []
    yield start
    for proc in started:
        for pid in [*descendants(proc.pid), *start.others]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def descendants(pid: int) -> list[int]:
    """The processes started by `pid`, by their children, and so on."""
    found = []
    for child in children(pid):
        found += [child, *descendants(child)]
    return found


def wait_for(condition, timeout: float = 60.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _proc_stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...), or None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc on Linux, where CI images may lack pgrep)."""
    if Path("/proc/self/stat").exists():
        stats = {int(entry.name): _proc_stat(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()}
        return sorted(child for child, fields in stats.items() if fields and int(fields[1]) == pid)
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return sorted(int(line) for line in found.split())


def has_worked(pid: int, ticks: int = 5) -> bool:
    """Whether `pid` has used `ticks` clock ticks of CPU time (user + system; 50 ms at the usual 100 Hz)."""
    fields = _proc_stat(pid)
    return fields is not None and int(fields[11]) + int(fields[12]) >= ticks


def running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie, dead but not yet reaped by whoever adopted it, is not)."""
    if Path("/proc/self/stat").exists():
        fields = _proc_stat(pid)
        return fields is not None and fields[0] != "Z"
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


def resume_args(out_dir: Path, until: int) -> list[str]:
    return ["train", "--quiet", "--resume", str(out_dir / "last.pt"), "--until-step", str(until)]


def run_straight(runner, config: Path, tmp_path: Path, until: int | None = None) -> Path:
    """Train the same config without a break into tmp_path/straight (to `until`, else to the end); its folder."""
    out = tmp_path / "straight"
    until_args = [] if until is None else ["--until-step", str(until)]
    result = runner.invoke(
        app, ["train", "--quiet", "--config", str(config), "--set", f'train.out_dir="{out}"', *until_args]
    )
    assert result.exit_code == 0, result.output
    return out


def temporaries(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.glob(".*.tmp"))


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

    until = stopped + 4
    resumed = runner.invoke(app, resume_args(tmp_path / "run", until))
    assert resumed.exit_code == 0, resumed.output
    run_straight(runner, config, tmp_path, until)
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
    processes.others += ranks
    assert len(ranks) == 2
    os.kill(proc.pid if target == "torchrun" else ranks[-1], signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert not any(map(running, ranks))
    stopped = read_checkpoint(tmp_path / "run" / "last.pt")["iteration"]
    assert stopped == metric_lines(tmp_path / "run")[-1]["step"] >= 3, stderr
    assert "resume with: lmkit train --resume" in stderr
    if target == "one rank":  # torchrun reports how each rank ended (and calls any end but 0 a failure)
        assert stderr.count("exitcode  : 143") == 2, stderr

    until = stopped + 3
    resumed = runner.invoke(app, resume_args(tmp_path / "run", until))
    assert resumed.exit_code == 0, resumed.output
    run_straight(runner, config, tmp_path, until)
    # Two processes sum their halves of the batch in another order than one: equal to float rounding.
    assert [s for s, _ in losses(tmp_path / "run")] == [s for s, _ in losses(tmp_path / "straight")]
    assert [loss for _, loss in losses(tmp_path / "run")] == pytest.approx(
        [loss for _, loss in losses(tmp_path / "straight")], rel=1e-5
    )


# --- kill -9 --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_at_many_points_while_checkpointing_every_step_always_leaves_a_resumable_last_pt(
    runner, tmp_path, processes
):
    out = tmp_path / "run"
    config = write_tiny_run(tmp_path, train_table(out, ckpt_every=1))
    args = ["train", "--quiet", "--config", str(config)]
    steps_seen = []
    for kill in range(8):
        last = out / "last.pt"
        written_before = last.stat().st_mtime_ns if last.exists() else 0
        proc = processes(*args)
        wait_for(lambda: last.exists() and last.stat().st_mtime_ns != written_before, what="a new checkpoint")  # noqa: B023
        time.sleep(0.007 * kill)  # a different moment of the step / the write each time
        proc.kill()
        proc.communicate()
        checkpoint = read_checkpoint(last)  # complete, whatever the moment of the kill
        steps_seen.append(checkpoint["iteration"])
        args = ["train", "--quiet", "--resume", str(last)]
    assert steps_seen == sorted(steps_seen) and steps_seen[-1] > steps_seen[0]

    until = steps_seen[-1] + 2
    resumed = runner.invoke(app, resume_args(out, until))
    assert resumed.exit_code == 0, resumed.output
    assert temporaries(out) == []  # whatever the kills left mid-write was cleaned up
    run_straight(runner, config, tmp_path, until)
    # Eight kills later: every step logged once, with the losses and the weights of an unbroken run.
    assert losses(out) == losses(tmp_path / "straight")
    assert same_weights(out / "last.pt", tmp_path / "straight" / "last.pt")


HANG_IN_THIRD_SAVE = """
import sys, time, torch
from lmkit.cli.app import main
real_save, calls = torch.save, []
def save_then_hang(obj, handle, *args, **kwargs):
    calls.append(1)
    if len(calls) < 3:
        return real_save(obj, handle, *args, **kwargs)
    handle.write(b"PK half a checkpoint")
    handle.flush()
    time.sleep(600)
torch.save = save_then_hang
sys.argv = ["lmkit", *sys.argv[1:]]
main()
"""


def test_kill_9_in_the_middle_of_a_checkpoint_write_keeps_the_previous_one_and_the_leftover_is_cleaned(
    runner, tmp_path
):
    out = tmp_path / "run"
    config = write_tiny_run(tmp_path, train_table(out, ckpt_every=2))
    # Saves 1 and 2 are best.pt and last.pt at step 2 (eval_every is long: best.pt comes with the first eval).
    command = [sys.executable, "-c", HANG_IN_THIRD_SAVE, "train", "--quiet", "--config", str(config),
               "--set", "train.eval_every=2"]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    try:
        wait_for(lambda: len(temporaries(out)) == 1 and (out / "last.pt").exists(), what="a checkpoint mid-write")
    finally:
        proc.kill()
        proc.communicate()
    assert temporaries(out)[0].startswith(".best.pt.")  # the step-4 evaluation's best.pt, cut off
    assert read_checkpoint(out / "last.pt")["iteration"] == 2
    assert read_checkpoint(out / "best.pt")["iteration"] == 2
    resumed = runner.invoke(app, resume_args(out, 6))
    assert resumed.exit_code == 0, resumed.output
    assert temporaries(out) == []
    assert read_checkpoint(out / "last.pt")["iteration"] == 6
    assert [step for step, _ in losses(out)] == list(range(1, 7))


def test_stale_temporaries_are_those_of_dead_writers_on_this_host(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    names = {
        "dead": f".last.pt.{host}-{dead.pid}-abc123.tmp",
        "alive": f".last.pt.{host}-{os.getpid()}-abc123.tmp",
        "other host": f".last.pt.elsewhere-{dead.pid}-abc123.tmp",
        "other file": f".best.pt.{host}-{dead.pid}-abc123.tmp",
        "not ours": ".last.pt.xyz.tmp",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"partial")
    removed = lmkit.fileio.remove_stale_temporaries(tmp_path, "last.pt")
    assert [path.name for path in removed] == [names["dead"]]
    assert [path.name for path in lmkit.fileio.remove_stale_temporaries(tmp_path)] == [names["other file"]]
    assert sorted(temporaries(tmp_path)) == sorted([names["alive"], names["other host"], names["not ours"]])


# --- metrics.jsonl after a crash ---------------------------------------------------------------------------


def test_a_torn_last_metrics_line_is_skipped_with_a_warning_by_runs_and_by_resume(runner, tmp_path):
    out = tmp_path / "run"
    config = write_tiny_run(tmp_path, train_table(out, steps=8, ckpt_every=4))
    assert runner.invoke(app, ["train", "--quiet", "--config", str(config), "--until-step", "4"]).exit_code == 0
    # As if killed mid-line at step 6: step 5 was logged after the step-4 checkpoint, step 6 only in part.
    lines = metric_lines(out)
    step_4 = next(line for line in reversed(lines) if line["event"] == "train")
    torn_line = len(lines) + 2
    with (out / "metrics.jsonl").open("a") as log:
        log.write(json.dumps({**step_4, "step": 5, "loss": 99.0}) + "\n" + '{"event": "train", "step": 6, "lo')
    listed = runner.invoke(app, ["runs", "list", str(tmp_path), "--json"])
    assert listed.exit_code == 0, listed.output
    assert "warning:" in listed.stderr and "cut off" in listed.stderr and "Traceback" not in listed.stderr
    assert json.loads(listed.stdout)["runs"][0]["step"] == 5

    resumed = runner.invoke(app, resume_args(out, 8))
    assert resumed.exit_code == 0, resumed.output
    assert "warning:" in resumed.stderr and f"line {torn_line} is not a complete event" in resumed.stderr
    run_straight(runner, config, tmp_path)
    assert losses(out) == losses(tmp_path / "straight")  # steps 1-8 once each: the stale step 5 is gone


# --- two runs in one folder -------------------------------------------------------------------------------


def test_a_second_run_into_the_folder_of_a_running_one_is_refused_naming_it(runner, tmp_path, processes):
    out = tmp_path / "run"
    config = write_tiny_run(tmp_path, train_table(out))
    first = processes("train", "--quiet", "--config", str(config))
    wait_for(lambda: len(metric_lines(out)) >= 1, what="the first run's first step")
    second = runner.invoke(app, ["train", "--quiet", "--config", str(config), "--set", "train.seed=2"])
    assert_input_error(second, f"{out} is in use by another lmkit train run (pid {first.pid} on {socket.gethostname()}")
    lock = json.loads((out / LOCK_FILE).read_text())
    assert lock["pid"] == first.pid and lock["host"] == socket.gethostname()
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=60)
    assert first.returncode == 130
    assert not (out / LOCK_FILE).exists()  # released as the run ended
    resumed = runner.invoke(app, resume_args(out, read_checkpoint(out / "last.pt")["iteration"] + 1))
    assert resumed.exit_code == 0, resumed.output


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(runner, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (out / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": 0}))
    config = write_tiny_run(tmp_path, train_table(out, steps=2))
    result = runner.invoke(app, ["train", "--quiet", "--config", str(config)])
    assert result.exit_code == 0, result.output
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and f"taking over the lock of an earlier run in {out} (pid {dead.pid}" in warning[0]
    assert not (out / LOCK_FILE).exists()


def test_a_lock_from_another_host_is_refused_with_what_to_do(runner, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_FILE).write_text(json.dumps({"pid": 4242, "host": "node-17", "started": 0}))
    config = write_tiny_run(tmp_path, train_table(out, steps=2))
    result = runner.invoke(app, ["train", "--quiet", "--config", str(config)])
    assert_input_error(result, "(pid 4242 on node-17, started")
    assert f"if that run is gone, delete {out / LOCK_FILE}" in result.stderr
    assert sorted(path.name for path in out.iterdir()) == [LOCK_FILE]  # nothing written


def test_the_lock_is_taken_atomically(tmp_path):
    from lmkit.training.runlock import acquire, release

    mine = acquire(tmp_path)
    with pytest.raises(InputError, match=f"pid {os.getpid()}"):
        acquire(tmp_path)  # the holder is alive (it is this process): refused, not taken over
    release(tmp_path, mine)
    assert list(tmp_path.iterdir()) == []


# --- a full disk ----------------------------------------------------------------------------------------------


class _FillingFile:
    """A file on a disk with `room` bytes left (shared by every file opened through it): writes beyond fail."""

    def __init__(self, handle, room: list[int]) -> None:
        self._handle, self._room = handle, room

    def write(self, data) -> int:
        size = len(data)
        if size > self._room[0]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room[0] -= size
        return self._handle.write(data)

    def __getattr__(self, name: str):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._handle.close()


@pytest.fixture
def full_disk(monkeypatch):
    """Call with a number of bytes: from then on the atomic writes of lmkit.fileio have that much room left."""
    real_fdopen = os.fdopen

    def fill(room: int) -> None:
        left = [room]
        monkeypatch.setattr(lmkit.fileio.os, "fdopen", lambda *a, **k: _FillingFile(real_fdopen(*a, **k), left))

    return fill


def assert_disk_full_error(result, path: Path) -> None:
    """Exit 1 with one error line naming the file and the full disk (beside the progress bar), no traceback."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: DiskFull: no space left on the device writing"), lines
    assert str(path) in lines[0] and "Traceback" not in result.output


def test_a_full_disk_stops_training_with_one_line_and_keeps_the_checkpoints(runner, tmp_path, full_disk):
    out = tmp_path / "run"
    config = write_tiny_run(tmp_path, train_table(out, steps=8, ckpt_every=2))
    assert runner.invoke(app, ["train", "--quiet", "--config", str(config), "--set", "train.eval_every=2",
                               "--until-step", "2"]).exit_code == 0  # fmt: skip
    before = {name: (out / name).read_bytes() for name in ("last.pt", "best.pt")}
    full_disk(20_000)  # room for config.toml and metrics.jsonl, not for a checkpoint
    result = runner.invoke(app, resume_args(out, 6))
    assert_disk_full_error(result, out / "best.pt")  # the step-4 evaluation's best.pt comes first
    assert {name: (out / name).read_bytes() for name in before} == before
    assert temporaries(out) == []
    assert not (out / LOCK_FILE).exists()


def test_a_full_disk_stops_encoding_with_one_line_and_no_partial_file(runner, tmp_path, full_disk):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(SHAKESPEARE.read_bytes()[:200_000])
    save_tokenizer(tmp_path / "tok.json", {i: bytes([i]) for i in range(256)}, [], [])
    out = tmp_path / "out"
    out.mkdir()
    np.save(out / "tokens.npy", np.arange(10, dtype=np.uint16))  # an earlier encoding, to be kept
    full_disk(100_000)
    result = runner.invoke(app, ["tokenizer", "encode", str(corpus), "--tokenizer", str(tmp_path / "tok.json"),
                                 "--out", str(out / "tokens.npy"), "--workers", "2"])  # fmt: skip
    assert_disk_full_error(result, out / "tokens.npy")
    assert [path.name for path in out.iterdir()] == ["tokens.npy"]
    assert np.load(out / "tokens.npy").tolist() == list(range(10))
    assert multiprocessing.active_children() == []


def test_a_full_disk_stops_tokenizer_training_with_one_line_and_no_partial_file(runner, tmp_path, full_disk):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(SHAKESPEARE.read_bytes()[:50_000])
    out = tmp_path / "out"
    out.mkdir()
    (out / "tokenizer.json").write_text("an earlier tokenizer")
    full_disk(1_000)
    result = runner.invoke(app, ["tokenizer", "train", str(corpus), "--vocab-size", "300",
                                 "--out", str(out / "tokenizer.json")])  # fmt: skip
    assert_disk_full_error(result, out / "tokenizer.json")
    assert [path.name for path in out.iterdir()] == ["tokenizer.json"]
    assert (out / "tokenizer.json").read_text() == "an earlier tokenizer"


def test_a_full_disk_in_the_safetensors_writer_is_the_same_one_line(runner, tmp_path, monkeypatch):
    """safetensors' writer (Rust) reports a full disk only in its message; export says it as every writer does."""
    from safetensors import SafetensorError

    config = write_tiny_run(tmp_path, train_table(tmp_path / "run", steps=1))
    assert runner.invoke(app, ["train", "--quiet", "--config", str(config)]).exit_code == 0

    def no_room(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("safetensors.torch.save_file", no_room)
    out = tmp_path / "hf"
    result = runner.invoke(app, ["export", "hf", str(tmp_path / "run" / "last.pt"), "--out", str(out)])
    assert_disk_full_error(result, out)
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith((".hf", "hf"))]  # no staging left


def test_a_full_disk_while_appending_metrics_is_one_error(tmp_path):
    from lmkit.errors import DiskFull
    from lmkit.training.metrics import MetricsLog

    path = tmp_path / "metrics.jsonl"
    with MetricsLog(path) as log:
        log.write("train", step=1, loss=2.0)
        log._file = _FillingFile(log._file, [0])
        with pytest.raises(DiskFull, match=f"writing {path} .*the events before it are kept"):
            log.write("train", step=2, loss=1.5)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1]


def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs `unshare -rm` to mount a small tmpfs (user namespaces)")
def test_a_real_full_tmpfs(tmp_path):
    """The same three faults on a real 1 MB tmpfs (in a private mount namespace), end to end."""
    out = tmp_path / "small"
    out.mkdir()
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(SHAKESPEARE.read_bytes())
    config = write_tiny_run(tmp_path, train_table(out, steps=40, ckpt_every=2))
    lmkit = f"{sys.executable} -m lmkit"
    fill = f"head -c $(( ($(df -k --output=avail {out} | tail -1) - 8) * 1024 )) /dev/zero > {out}/filler"
    script = f"""
mount -t tmpfs -o size=1m tmpfs {out} || exit 99
{lmkit} tokenizer encode {corpus} --tokenizer {tmp_path / "tokenizer.json"} --out {out}/t.npy --workers 2
echo "encode=$?"; ls -A {out}
{lmkit} tokenizer train {corpus} --vocab-size 300 --out {out}/tok.json --json >/dev/null && cp {out}/tok.json {tmp_path}
{fill}
{lmkit} tokenizer train {corpus} --vocab-size 400 --out {out}/tok.json
echo "tokenizer=$?"; cmp {out}/tok.json {tmp_path}/tok.json && echo "tokenizer kept"
rm {out}/filler {out}/tok.json
{lmkit} train --quiet --config {config} --set train.eval_every=2 --until-step 2 >/dev/null
cp {out}/last.pt {out}/best.pt {tmp_path}
{fill}
{lmkit} train --quiet --resume {out}/last.pt --until-step 4
echo "run=$?"; cmp {out}/last.pt {tmp_path}/last.pt && cmp {out}/best.pt {tmp_path}/best.pt && echo "checkpoints kept"
ls -A {out}
{lmkit} export hf {tmp_path}/last.pt --out {out}/hf
echo "export=$?"
{lmkit} export hf {tmp_path}/last.pt --out {tmp_path}/hf >/dev/null
{lmkit} import hf {tmp_path}/hf --out {out}/imported.pt
echo "import=$?"
ls -A {out}
"""
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=ENV, timeout=300)
    report = done.stdout.splitlines()
    assert report[report.index("encode=1") + 1] == "tokenizer=1"  # `ls` found nothing after the failed encoding
    assert "tokenizer=1" in report and "tokenizer kept" in report
    assert "run=1" in report and "checkpoints kept" in report
    listing = report[report.index("checkpoints kept") + 1 : report.index("export=1")]
    assert sorted(listing) == ["best.pt", "config.toml", "filler", "last.pt", "metrics.jsonl"]  # no temporaries
    assert "import=1" in report and report[report.index("import=1") + 1 :] == listing  # nothing left by either
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 5 and all("no space left on the device writing" in line for line in errors), done.stderr
    assert f"writing {out / 'hf'} " in errors[3] and f"writing {out / 'imported.pt'} " in errors[4]
    assert "Traceback" not in done.stderr


# --- signals to the tokenizer's worker processes -----------------------------------------------------------


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory) -> Path:
    """tinyshakespeare 40 times (45 MB): long enough to be stopped while its workers are busy."""
    folder = tmp_path_factory.mktemp("big")
    save_tokenizer(folder / "tok.json", {i: bytes([i]) for i in range(256)}, [], [])
    corpus = folder / "corpus.txt"
    corpus.write_bytes(SHAKESPEARE.read_bytes() * 40)
    return corpus


def tokenizer_command(command: str, corpus: Path, out: Path) -> list[str]:
    if command == "encode":
        return ["tokenizer", "encode", str(corpus), "--tokenizer", str(corpus.parent / "tok.json"),
                "--out", str(out / "tokens.npy"), "--workers", "2"]  # fmt: skip
    return ["tokenizer", "train", str(corpus), "--vocab-size", "5000", "--out", str(out / "tok.json"),
            "--workers", "2"]  # fmt: skip


def start_with_workers(processes, command: str, corpus: Path, out: Path) -> tuple[subprocess.Popen, list[int]]:
    """Start the command and wait until its two workers are busy (encode: until output is being written)."""
    out.mkdir()
    proc = processes(*tokenizer_command(command, corpus, out))
    wait_for(lambda: len(children(proc.pid)) >= 2, what="two workers")
    workers = children(proc.pid)
    if command == "encode":
        wait_for(lambda: any(path.stat().st_size > 1 << 20 for path in out.glob(".*.tmp")), what="output")
    else:
        wait_for(lambda: all(map(has_worked, workers)), what="both workers counting")
    return proc, workers


@pytest.mark.slow
@pytest.mark.parametrize("command", ["encode", "train"])
@pytest.mark.parametrize(
    ("signum", "to_group"), [(signal.SIGINT, True), (signal.SIGTERM, False)], ids=["ctrl-c", "sigterm"]
)
def test_ctrl_c_or_sigterm_stops_the_workers_and_leaves_no_output(
    processes, big_corpus, tmp_path, command, signum, to_group
):
    # Ctrl-C in a terminal reaches the whole process group; a scheduler's SIGTERM (or `kill`) the command.
    proc, workers = start_with_workers(processes, command, big_corpus, tmp_path / "out")
    (os.killpg if to_group else os.kill)(proc.pid, signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    assert not any(map(running, workers))
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("command", ["encode", "train", "train-model"])
def test_ctrl_c_twice_20_ms_apart_and_again_exits_130_without_a_traceback(processes, big_corpus, tmp_path, command):
    if command == "train-model":
        config = write_tiny_run(tmp_path, train_table(tmp_path / "run"))
        proc = processes("train", "--quiet", "--config", str(config))
        wait_for(lambda: len(metric_lines(tmp_path / "run")) >= 1, what="the first step")
        workers = []
    else:
        proc, workers = start_with_workers(processes, command, big_corpus, tmp_path / "out")
    # Two Ctrl-C 20 ms apart, then more every 10 ms while the command cleans up and exits: whenever a
    # second one lands (in the clean-up, in the interpreter's exit handlers), it must change nothing.
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.02 if deadline - time.monotonic() > 29.9 else 0.01)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert not any(map(running, workers))


def test_encode_killed_with_9_its_workers_exit_and_the_next_encode_removes_its_leftover(
    processes, runner, big_corpus, tmp_path
):
    out = tmp_path / "out"
    proc, workers = start_with_workers(processes, "encode", big_corpus, out)
    proc.kill()
    proc.wait()  # not communicate(): orphaned workers would hold its output pipes open
    wait_for(lambda: not any(map(running, workers)), timeout=10, what="the orphaned workers to exit")
    assert len(temporaries(out)) == 1  # nothing can remove it after kill -9 ...
    small = big_corpus.parent / "small.txt"
    small.write_text("To be, or not to be")
    again = runner.invoke(app, tokenizer_command("encode", small, out))
    assert again.exit_code == 0, again.output
    assert temporaries(out) == []  # ... but the next writer of the same file does
    assert np.load(out / "tokens.npy").tolist() == list(b"To be, or not to be")


def test_a_signal_during_the_ranks_stop_vote_counts_at_the_next_step_on_every_rank(tmp_path):
    from lmkit.training.config import load_config
    from lmkit.training.loop import Trainer
    from lmkit.training.signals import StopRequest

    trainer = Trainer(load_config(write_tiny_run(tmp_path, train_table(tmp_path / "run"))))
    stop = StopRequest()

    class SignalMidVote:
        """The all-reduce of a rank that receives SIGTERM after sending its own 0: the ranks agreed on 0."""

        def max(self, number: int, device) -> int:
            stop.set(signal.SIGTERM)
            return number

    trainer.dist = SignalMidVote()
    assert trainer._stopping(stop) is False  # as the other ranks, which saw 0: all train one more step
    assert trainer._stopping(stop) is True  # the next vote carries the signal to every rank
    assert stop.signum == signal.SIGTERM
