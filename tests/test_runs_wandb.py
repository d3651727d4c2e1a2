"""Optional Weights & Biases logging: every metrics.jsonl event reaches W&B, resume reuses the W&B run,
and a config that asks for W&B without wandb installed is refused before training."""

import json
import sys
import types
from pathlib import Path

import pytest
from helpers import write_tiny_run

from lmkit.cli.app import app


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A 4-step run of a tiny byte-level model that asks for W&B logging."""
    return write_tiny_run(
        tmp_path,
        "batch_size = 4\nsteps = 4\neval_every = 2\neval_batches = 1\nlog_every = 1\n"
        f'device = "cpu"\nwandb_project = "lmkit-test"\nout_dir = "{tmp_path / "run"}"\n',
        n_bytes=20_000,
    )


class FakeRun:
    def __init__(self, **init_args):
        self.init_args, self.logged, self.finished = init_args, [], False

    def log(self, values, step):
        self.logged.append((step, values))

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    runs = []

    def init(**kwargs):
        runs.append(FakeRun(**kwargs))
        return runs[-1]

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    return runs


def test_every_metrics_event_reaches_wandb_and_resume_reuses_the_run(runner, config, tmp_path, fake_wandb):
    result = runner.invoke(app, ["train", "--quiet", "--config", str(config), "--until-step", "2"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", "--quiet", "--resume", str(tmp_path / "run" / "last.pt")])
    assert result.exit_code == 0, result.output

    first, second = fake_wandb
    assert first.init_args["project"] == "lmkit-test" and first.finished and second.finished
    assert first.init_args["id"] == second.init_args["id"]  # the resumed run logs to the same W&B run
    assert first.init_args["config"]["model"]["d_model"] == 16
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    expected = [
        (e["step"], {f"{e['event']}/{k}": v for k, v in e.items() if k not in ("event", "step") and v is not None})
        for e in events
        if e["event"] not in ("start", "end")  # lines about the process stay in metrics.jsonl
    ]
    assert first.logged + second.logged == expected
    assert {step for step, _ in second.logged} == {3, 4}


def test_wandb_project_without_wandb_installed_is_refused(runner, config, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    result = runner.invoke(app, ["train", "--quiet", "--config", str(config)])
    assert result.exit_code == 2
    assert "pip install wandb" in result.stderr
    assert not (tmp_path / "run" / "last.pt").exists()
