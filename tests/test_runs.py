"""`lmkit runs list / compare / plot` on synthetic run folders: statuses, facts, curve data, images, bad input."""

import json
import math
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest
from helpers import assert_input_error

import lmkit.tracking.plot
from lmkit.cli.app import app
from lmkit.tracking.plot import Series, curves, make_figure
from lmkit.tracking.runs import load_runs, read_run, run_status

NAN = float("nan")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def train_line(step: int, loss: float, lr: float = 1e-3, grad_norm: float = 0.5) -> dict:
    return {"event": "train", "step": step, "tokens": step * 64, "time_s": step * 0.5, "loss": loss, "lr": lr,
            "grad_norm": grad_norm, "tokens_per_s": 128.0}  # fmt: skip


def eval_line(step: int, val_loss: float) -> dict:
    return {"event": "eval", "step": step, "tokens": step * 64, "time_s": step * 0.5, "val_loss": val_loss}


def make_run(
    folder: Path,
    records: list[dict],
    steps: int = 4,
    age_s: float = 3600,
    lr: float = 1e-3,
    d_model: int = 32,
    extra_lines: str = "",
) -> Path:
    """A run folder as `lmkit train` leaves it: config.toml and metrics.jsonl, last written `age_s` ago."""
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(
        f'[data]\ntrain = "train.npy"\nval = "val.npy"\ntokenizer = "tokenizer.json"\n'
        f"[model]\nvocab_size = 256\ncontext_length = 16\nd_model = {d_model}\nnum_layers = 2\nnum_heads = 4\n"
        f"[optim]\nlr = {lr}\n"
        f'[train]\nbatch_size = 4\nsteps = {steps}\nout_dir = "{folder}"\n'
    )
    metrics = folder / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(record) + "\n" for record in records) + extra_lines)
    stamp = time.time() - age_s
    os.utime(metrics, (stamp, stamp))
    return folder


def finished_records() -> list[dict]:
    return [train_line(1, 5.0), train_line(2, 4.0), eval_line(2, 4.2), train_line(3, 3.5), train_line(4, 3.0),
            eval_line(4, 3.4)]  # fmt: skip


def tiny_parameters(d_model: int) -> int:
    # embedding + per layer (4 attention matrices + 3 SwiGLU matrices of width 64 + 2 norms) + final norm + head
    d, d_ff, vocab = d_model, 64, 256
    return vocab * d + 2 * (4 * d * d + 3 * d * d_ff + 2 * d) + d + d * vocab


@pytest.fixture
def zoo(tmp_path: Path) -> Path:
    """One run of every status under tmp_path/runs."""
    runs = tmp_path / "runs"
    make_run(runs / "done", finished_records())
    make_run(runs / "live", [train_line(1, 5.0), train_line(2, 4.0)], age_s=5)
    make_run(runs / "dead", [train_line(1, 5.0), train_line(2, 4.0), eval_line(2, 4.1)])
    make_run(runs / "group" / "nan", [train_line(1, 5.0), train_line(2, NAN)], age_s=5)
    make_run(runs / "group" / "blowup", [train_line(1, 5.0), train_line(2, 2.0), train_line(3, 9.0)])
    return runs


def test_the_list_fits_80_columns_leaving_out_columns_before_cutting_names(runner, zoo):
    long_name = "sweep-of-the-learning-rate/optim.lr=1e-3-with-a-long-suffix"
    (zoo / long_name).parent.mkdir()
    shutil.copytree(zoo / "done", zoo / long_name)
    for columns, whole in ((80, ["group/blowup", "quickstart"]), (60, ["group/blowup"])):
        shutil.copytree(zoo / "done", zoo / "quickstart", dirs_exist_ok=True)
        lines = runner.invoke(app, ["runs", "list", str(zoo)], env={"COLUMNS": str(columns)}).stdout.splitlines()
        assert max(map(len, lines)) <= columns
        header = next(number for number, line in enumerate(lines) if line.startswith("run "))
        rows = [line.split() for line in lines[header + 2 :]]
        assert len(rows) == 7 and all(row[-1] in {"finished", "running", "crashed", "diverged"} for row in rows)
        names = [row[0] for row in rows]
        assert all(name in names for name in whole) and any(name.endswith("…") for name in names)
        assert "shape" not in lines[header] and "status" in lines[header] and "steps" in lines[header]
    wide = runner.invoke(app, ["runs", "list", str(zoo)], env={"COLUMNS": "200"}).stdout
    assert long_name in wide and "shape" in wide and "tokens" in wide


# --- status ---------------------------------------------------------------------------------------------


def test_list_reports_every_run_with_its_status(runner, zoo):
    result = runner.invoke(app, ["runs", "list", str(zoo), "--json"])
    assert result.exit_code == 0, result.output
    runs = {run["name"]: run for run in json.loads(result.stdout)["runs"]}
    assert {name: run["status"] for name, run in runs.items()} == {
        "dead": "crashed",
        "done": "finished",
        "group/blowup": "diverged",
        "group/nan": "diverged",
        "live": "running",
    }
    done = runs["done"]
    assert done["parameters"] == tiny_parameters(32)
    assert (done["step"], done["total_steps"], done["tokens"], done["time_s"]) == (4, 4, 256, 2.0)
    assert (done["best_val_loss"], done["final_val_loss"], done["final_train_loss"]) == (3.4, 3.4, 3.0)
    assert (done["layers"], done["d_model"], done["heads"]) == (2, 32, 4)
    assert runs["live"]["best_val_loss"] is None

    table = runner.invoke(app, ["runs", "list", str(zoo)])
    assert table.exit_code == 0, table.output
    for text in ("group/blowup", "diverged", "crashed", "running", "finished", "4/4", "2x32 h4"):
        assert text in table.stdout


def test_status_rules_at_their_edges(tmp_path):
    def status(name: str, records: list[dict], age_s: float = 3600, steps: int = 10) -> str:
        return run_status(read_run(make_run(tmp_path / name, records, steps=steps, age_s=age_s)))

    # A NaN ends a run even when its file was written a moment ago; so does an infinite gradient norm.
    assert status("nan-val", [train_line(1, 5.0), eval_line(1, NAN)], age_s=0) == "diverged"
    assert status("inf-grad", [train_line(1, 5.0, grad_norm=math.inf)], age_s=0) == "diverged"
    # Finishing counts even if the loss spiked on the way.
    assert status("spiky", [train_line(1, 5.0), train_line(2, 1.0), train_line(3, 4.0)], steps=3) == "finished"
    # An explosion in a run that is still writing is left to finish or recover.
    assert status("rising", [train_line(1, 5.0), train_line(2, 1.0), train_line(3, 4.0)], age_s=0) == "running"
    # Exploding needs both twice the best loss so far and a rise of more than one nat.
    assert status("double", [train_line(1, 0.01), train_line(2, 0.05)]) == "crashed"
    assert status("nat", [train_line(1, 6.0), train_line(2, 3.0), train_line(3, 4.5)]) == "crashed"
    assert status("both", [train_line(1, 6.0), train_line(2, 1.5), train_line(3, 3.1)]) == "diverged"
    # Running: written within 5 minutes, or within 3 x the longest logging gap for a run that logs rarely.
    assert status("quiet", [train_line(1, 5.0)], age_s=200) == "running"
    assert status("stale", [train_line(1, 5.0)], age_s=400) == "crashed"
    slow = [dict(train_line(1, 5.0), time_s=200.0), dict(train_line(2, 4.0), time_s=400.0)]
    assert status("slow-logger", slow, age_s=500) == "running"
    assert status("slow-dead", slow, age_s=700) == "crashed"
    # total_tokens instead of steps: 1000 tokens at 4 x 16 tokens per step is 16 steps.
    folder = make_run(tmp_path / "by-tokens", [train_line(16, 3.0)])
    config = (folder / "config.toml").read_text().replace("steps = 4", "total_tokens = 1000")
    (folder / "config.toml").write_text(config)
    assert run_status(read_run(folder)) == "finished"


def dead_pid() -> int:
    """The id of a process that has exited."""
    import subprocess

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_run_that_wrote_start_and_end_lines_is_judged_by_them(tmp_path):
    host = socket.gethostname()

    def status(name: str, records: list[dict], age_s: float = 3600) -> str:
        return run_status(read_run(make_run(tmp_path / name, records, steps=10, age_s=age_s)))

    def start(step: int = 0, pid: int = os.getpid(), on: str = host) -> dict:
        return {"event": "start", "step": step, "tokens": 0, "time_s": 0.0, "pid": pid, "host": on}

    def end(step: int, how: str) -> dict:
        return {"event": "end", "step": step, "tokens": step * 64, "time_s": step * 0.5, "status": how}

    lines = [train_line(1, 5.0), train_line(2, 4.0)]
    for how in ("interrupted", "stopped", "finished", "crashed"):
        assert status(how, [start(), *lines, end(2, how)], age_s=1) == how  # however recent the file
    # No end line: running while the process lives, however long ago the file changed; crashed once it is gone.
    assert status("alive", [start(), *lines], age_s=3600) == "running"
    assert status("killed", [start(pid=dead_pid()), *lines], age_s=1) == "crashed"
    assert status("killed-exploding", [start(pid=dead_pid()), *lines, train_line(3, 9.0)], age_s=1) == "diverged"
    # A resumed run: only the last stretch counts.
    resumed = [start(), *lines, end(2, "interrupted"), start(step=2), train_line(3, 3.0)]
    assert status("resumed", resumed, age_s=3600) == "running"
    # Another host's process cannot be checked: the file's age decides, as for older runs.
    assert status("elsewhere", [start(on="another-host"), *lines], age_s=1) == "running"
    assert status("elsewhere-old", [start(on="another-host"), *lines], age_s=3600) == "crashed"


def test_list_shows_stopped_and_interrupted(runner, tmp_path):
    stopped = {"event": "end", "step": 2, "tokens": 128, "time_s": 1.0, "status": "stopped"}
    make_run(tmp_path / "runs" / "a", [train_line(1, 5.0), train_line(2, 4.0), stopped])
    result = runner.invoke(app, ["runs", "list", str(tmp_path / "runs")])
    assert result.exit_code == 0 and "stopped" in result.stdout and "crashed" not in result.stdout


def test_a_line_cut_off_by_a_crash_is_dropped_but_other_damage_is_refused(runner, tmp_path):
    make_run(tmp_path / "cut" / "a", finished_records(), extra_lines='{"event": "train", "st')
    result = runner.invoke(app, ["runs", "list", str(tmp_path / "cut"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["runs"][0]["status"] == "finished"

    broken = make_run(tmp_path / "bad" / "a", finished_records())
    lines = (broken / "metrics.jsonl").read_text().splitlines()
    (broken / "metrics.jsonl").write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    assert_input_error(runner.invoke(app, ["runs", "list", str(tmp_path / "bad")]), "line 2 is not JSON")


def test_list_bad_input(runner, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text("")  # no config.toml beside it: not a run
    assert_input_error(runner.invoke(app, ["runs", "list", str(tmp_path / "empty")]), "no runs found in")
    assert_input_error(runner.invoke(app, ["runs", "list", str(tmp_path / "nowhere")]), "is not a folder")
    bad = make_run(tmp_path / "typo" / "a", finished_records())
    (bad / "config.toml").write_text((bad / "config.toml").read_text().replace("lr =", "lrr ="))
    assert_input_error(runner.invoke(app, ["runs", "list", str(tmp_path / "typo")]), "unknown key optim.lrr")


# --- compare --------------------------------------------------------------------------------------------


def test_compare_shows_only_the_fields_that_differ_and_the_metrics(runner, tmp_path):
    a = make_run(tmp_path / "a", finished_records(), lr=1e-3)
    b = make_run(tmp_path / "b", [train_line(1, 5.0), train_line(2, 4.5), eval_line(2, 4.6)], lr=3e-3, d_model=64)
    result = runner.invoke(app, ["runs", "compare", str(a), str(b), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["runs"] == ["a", "b"]  # run names, not paths
    # out_dir always differs and is left out; min_lr follows lr (lr / 10).
    assert report["differences"] == {
        "model.d_model": [32, 64],
        "model.d_ff": [64, 192],
        "optim.lr": [1e-3, 3e-3],
        "optim.min_lr": [1e-3 / 10, 3e-3 / 10],
    }
    metrics = report["metrics"]
    assert metrics["status"] == ["finished", "crashed"]
    assert metrics["step"] == [4, 2] and metrics["tokens"] == [256, 128]
    assert metrics["final_train_loss"] == [3.0, 4.5]
    assert metrics["final_val_loss"] == [3.4, 4.6] and metrics["best_val_loss"] == [3.4, 4.6]

    table = runner.invoke(app, ["runs", "compare", str(a), str(b)])
    assert table.exit_code == 0, table.output
    assert "optim.lr" in table.stdout and "model.d_model" in table.stdout and "best_val_loss" in table.stdout
    assert "train.batch_size" not in table.stdout


def test_compare_expands_a_folder_of_runs_and_needs_two(runner, tmp_path):
    make_run(tmp_path / "sweep" / "optim.lr=1e-3", finished_records(), lr=1e-3)
    make_run(tmp_path / "sweep" / "optim.lr=1e-2", finished_records(), lr=1e-2)
    result = runner.invoke(app, ["runs", "compare", str(tmp_path / "sweep"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["differences"]["optim.lr"] == [1e-3, 1e-2]  # by the swept value, not the folders' names
    assert report["runs"] == ["optim.lr=1e-3", "optim.lr=1e-2"]
    assert_input_error(
        runner.invoke(app, ["runs", "compare", str(tmp_path / "sweep" / "optim.lr=1e-3")]), "at least two runs"
    )
    assert_input_error(
        runner.invoke(app, ["runs", "compare", str(tmp_path / "nope"), str(tmp_path / "sweep")]), "does not exist"
    )


# --- curves and plots -----------------------------------------------------------------------------------


@pytest.fixture
def plotted(tmp_path: Path) -> tuple[Path, Path]:
    """A finished run and a diverged one whose last logged loss is NaN (and a line missing its grad_norm)."""
    good = make_run(tmp_path / "good", finished_records())
    partial = {key: value for key, value in train_line(2, 4.0, lr=2e-3).items() if key != "grad_norm"}
    bad = make_run(
        tmp_path / "bad",
        [train_line(1, 5.5, lr=1e-3, grad_norm=2.0), eval_line(1, 5.6), partial, train_line(3, NAN, grad_norm=9.0)],
    )
    return good, bad


@pytest.mark.parametrize(
    ("metric", "x", "good", "bad"),
    [
        ("val_loss", "steps", ([2, 4], [4.2, 3.4]), ([1], [5.6])),
        ("val_loss", "tokens", ([128, 256], [4.2, 3.4]), ([64], [5.6])),
        ("val_loss", "time", ([1.0, 2.0], [4.2, 3.4]), ([0.5], [5.6])),
        ("train_loss", "steps", ([1, 2, 3, 4], [5.0, 4.0, 3.5, 3.0]), ([1, 2], [5.5, 4.0])),
        ("train_loss", "time", ([0.5, 1.0, 1.5, 2.0], [5.0, 4.0, 3.5, 3.0]), ([0.5, 1.0], [5.5, 4.0])),
        ("lr", "steps", ([1, 2, 3, 4], [1e-3] * 4), ([1, 2, 3], [1e-3, 2e-3, 1e-3])),
        ("grad_norm", "tokens", ([64, 128, 192, 256], [0.5] * 4), ([64, 192], [2.0, 9.0])),
    ],
)
def test_curves_hand_exactly_the_logged_points_to_the_plot(plotted, metric, x, good, bad):
    series = curves(load_runs(list(plotted)), metric, x)
    assert series == [
        Series(label="good", x=good[0], y=good[1], diverged=False),
        Series(label="bad", x=bad[0], y=bad[1], diverged=True),
    ]


def test_plot_writes_a_png_from_the_curves_the_command_asked_for(runner, plotted, tmp_path, monkeypatch):
    handed = []
    real_draw = lmkit.tracking.plot.draw_curves

    def spy(series, metric, x, out, log_y=False):
        handed.append((series, metric, x, log_y))
        real_draw(series, metric, x, out, log_y)

    monkeypatch.setattr(lmkit.tracking.plot, "draw_curves", spy)
    out = tmp_path / "curves.png"
    args = ["runs", "plot", *map(str, plotted), "--x", "tokens", "--metric", "train_loss", "--log", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    [(series, metric, x, log_y)] = handed
    assert (metric, x, log_y) == ("train_loss", "tokens", True)
    assert [(s.x, s.y, s.diverged) for s in series] == [
        ([64, 128, 192, 256], [5.0, 4.0, 3.5, 3.0], False),
        ([64, 128], [5.5, 4.0], True),
    ]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_the_figure_marks_diverged_runs():
    series = [Series("ok", [1, 2], [3.0, 2.0], False), Series("blew", [1, 2, 3], [3.0, 2.5, 8.0], True)]
    axes = make_figure(series, "val_loss", "steps", log_y=True).axes[0]
    assert [text.get_text() for text in axes.get_legend().get_texts()] == ["ok", "blew (diverged)"]
    crosses = [line for line in axes.get_lines() if line.get_marker() == "x"]
    assert len(crosses) == 1 and list(crosses[0].get_xdata()) == [3] and list(crosses[0].get_ydata()) == [8.0]
    assert axes.get_yscale() == "log" and axes.get_xlabel() == "step" and axes.get_ylabel() == "validation loss"


def test_a_sweep_comes_in_the_order_of_its_values_and_same_names_fall_back_to_paths(tmp_path):
    for lr in ("1e-1", "1e-3", "6e-3"):
        make_run(tmp_path / "sweep" / f"optim.lr={lr}", finished_records(), lr=float(lr))
    assert [run.name for run in load_runs([tmp_path / "sweep"])] == ["optim.lr=1e-3", "optim.lr=6e-3", "optim.lr=1e-1"]
    make_run(tmp_path / "one" / "run", finished_records(), d_model=16)
    make_run(tmp_path / "two" / "run", finished_records(), d_model=64)
    runs = load_runs([tmp_path / "two" / "run", tmp_path / "one" / "run"])
    assert [run.name for run in runs] == [str(tmp_path / "one" / "run"), str(tmp_path / "two" / "run")]


def test_smoothing_is_a_debiased_moving_average(plotted):
    [good, _] = curves(load_runs(list(plotted)), "train_loss", "steps", smooth=0.5)
    losses, expected, average = [5.0, 4.0, 3.5, 3.0], [], 0.0
    for number, loss in enumerate(losses, start=1):  # TensorBoard's rule, written out
        average = 0.5 * average + 0.5 * loss
        expected.append(average / (1 - 0.5**number))
    assert good.y == pytest.approx(expected) and good.y[0] == 5.0 and good.x == [1, 2, 3, 4]
    assert curves(load_runs(list(plotted)), "train_loss", "steps", smooth=0.0)[0].y == losses


def test_the_figure_names_its_metric_marks_evaluations_and_labels_log_ticks_plainly():
    series = [Series("optim.lr=1e-3", [100, 200, 300], [9.0, 5.5, 4.2], False)]
    axes = make_figure(series, "val_loss", "steps", log_y=True).axes[0]
    assert axes.get_title() == "validation loss against step"
    assert axes.get_lines()[0].get_marker() == "o"
    axes.figure.canvas.draw()
    labels = [tick.get_text() for tick in axes.get_yticklabels(minor=True) if tick.get_text()]
    assert "5" in labels and "4" in labels and not any("10^" in label or "times" in label for label in labels)
    train = make_figure([Series("a", [1, 2, 3], [5.0, 4.0, 3.0], False)], "train_loss", "steps").axes[0]
    assert train.get_lines()[0].get_marker() in (None, "None", "")


def test_plot_without_matplotlib_says_how_to_install_it(runner, plotted, tmp_path, monkeypatch):
    for name in [name for name in sys.modules if name.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # what `import matplotlib` finds when it is not installed
    out = tmp_path / "curves.png"
    assert_input_error(
        runner.invoke(app, ["runs", "plot", str(plotted[0]), "--out", str(out)]), 'pip install "lmkit[plot]"'
    )
    assert not out.exists()


def test_plot_bad_input(runner, plotted, tmp_path):
    run = str(plotted[0])
    out = str(tmp_path / "c.png")
    assert_input_error(
        runner.invoke(app, ["runs", "plot", run, "--metric", "accuracy", "--out", out]), "unknown metric 'accuracy'"
    )
    assert_input_error(
        runner.invoke(app, ["runs", "plot", run, "--x", "epochs", "--out", out]), "unknown x axis 'epochs'"
    )
    assert_input_error(
        runner.invoke(app, ["runs", "plot", run, "--out", str(tmp_path / "c.txt")]), "give a file ending in .png"
    )
    assert_input_error(
        runner.invoke(app, ["runs", "plot", run, "--out", str(tmp_path / "no" / "c.png")]), "does not exist"
    )
    assert_input_error(runner.invoke(app, ["runs", "plot", str(tmp_path / "nope"), "--out", out]), "does not exist")
    (tmp_path / "empty").mkdir()
    assert_input_error(runner.invoke(app, ["runs", "plot", str(tmp_path / "empty"), "--out", out]), "no runs found")
    fresh = make_run(tmp_path / "fresh", [train_line(1, 5.0)])
    assert_input_error(runner.invoke(app, ["runs", "plot", str(fresh), "--out", out]), "have logged no val_loss yet")
    message = "--smooth must be at least 0 and below 1 (0.9 averages about 10 points)"
    for smooth in ("1", "-0.1"):
        result = runner.invoke(app, ["runs", "plot", run, "--smooth", smooth, "--out", out])
        assert_input_error(result, f"{message}, got {float(smooth)}")
    assert not (tmp_path / "c.png").exists()
