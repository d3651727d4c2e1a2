"""What `lmkit train` prints on stderr when it is not a terminal: one plain line per log interval and evaluation."""

import re

import pytest
from helpers import write_tiny_run

from lmkit.cli.app import app
from lmkit.progress import progress_bar
from lmkit.training.console_log import TrainingConsole, console_mode, train_line

pytestmark = pytest.mark.usefixtures("one_thread")

LINE = re.compile(r"^step (\d+)/6 \| loss \d+\.\d{4} \| lr \d\.\d\de[-+]\d\d \| [\d,]+ tok/s \| ETA \d+:\d\d:\d\d$")


def test_off_a_terminal_train_prints_one_plain_line_per_log_interval(runner, tmp_path):
    config = write_tiny_run(
        tmp_path, f'steps = 6\nbatch_size = 2\nlog_every = 2\neval_every = 3\nout_dir = "{tmp_path / "r"}"\n'
    )
    result = runner.invoke(app, ["train", "--config", str(config)])  # the runner's stderr is not a terminal
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    steps = [int(match[1]) for line in lines if (match := LINE.match(line))]
    assert steps == [2, 4, 6]
    evaluations = [
        match
        for line in lines
        if (match := re.fullmatch(r"step [36]/6 \| val loss (\S+) \| val bpb \d+\.\d{4} \| best (\S+)", line))
    ]
    assert len(evaluations) == len([line for line in lines if "val loss" in line]) == 2
    losses = [float(match[1]) for match in evaluations]
    assert [float(match[2]) for match in evaluations] == [losses[0], min(losses)]
    assert "\r" not in result.stderr and "\x1b[" not in result.stderr  # no bar redrawn in place
    assert lines[0].startswith("training on cpu, ")


def test_quiet_prints_no_log_lines(runner, tmp_path):
    config = write_tiny_run(tmp_path, "steps = 4\nbatch_size = 2\nlog_every = 1\n" + f'out_dir = "{tmp_path / "r"}"\n')
    result = runner.invoke(app, ["train", "-q", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "loss" not in result.stderr


def test_mode_follows_the_terminal(monkeypatch):
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    assert console_mode(True) == "bar"
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    assert console_mode(True) == "lines"
    assert console_mode(False) == "off"


def test_a_line_leaves_out_what_is_not_known_yet():
    assert train_line(1, 10, 3.25, 1e-3, None, None) == "step 1/10 | loss 3.2500 | lr 1.00e-03"
    assert (
        train_line(5, 10, 3.0, 1e-3, 1234.4, 75) == "step 5/10 | loss 3.0000 | lr 1.00e-03 | 1,234 tok/s | ETA 0:01:15"
    )


def test_on_a_terminal_an_evaluation_is_a_line_above_the_bar():
    class Bar:
        def __init__(self) -> None:
            self.printed: list[str] = []

        def print(self, text: str) -> None:
            self.printed.append(text)

    bar = Bar()
    TrainingConsole("bar", 0, 300, bar).evaluated(50, 3.90123, 1.40701, 3.80001)
    assert bar.printed == ["step 50/300 | val loss 3.9012 | val bpb 1.4070 | best 3.8000"]


def test_a_resumed_bar_counts_the_absolute_step_of_the_total(capsys):
    with progress_bar("Training", 462, "steps", start=331) as bar:
        bar.advance(131)
    shown = capsys.readouterr().err
    assert "462/462 steps" in shown and "131/131" not in shown


def test_resuming_a_finished_run_says_there_is_nothing_to_do(runner, tmp_path):
    config = write_tiny_run(tmp_path, f'steps = 2\nbatch_size = 2\nout_dir = "{tmp_path / "r"}"\n')
    assert runner.invoke(app, ["train", "-q", "--config", str(config)]).exit_code == 0
    metrics = (tmp_path / "r" / "metrics.jsonl").read_text()
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "nothing to do: the run ended at step 2" in result.stderr and "Training" not in result.stdout
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == metrics
