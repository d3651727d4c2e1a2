"""What `lmkit train` prints on stderr when it is not a terminal: one plain line per log interval and evaluation."""

import re

import pytest
from helpers import write_tiny_run

from lmkit.cli.app import app
from lmkit.training.console_log import console_mode, train_line

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
    assert [line for line in lines if "val loss" in line] == [
        line for line in lines if re.fullmatch(r"step [36]/6 \| val loss \d+\.\d{4}", line)
    ]
    assert len([line for line in lines if "val loss" in line]) == 2
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
