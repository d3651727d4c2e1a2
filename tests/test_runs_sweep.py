"""`lmkit train --sweep`: one tiny run per value in sibling folders, divergence and Ctrl-C, and bad sweep specs."""

import json
from pathlib import Path

import pytest
from helpers import assert_input_error, make_loss_nan_at_call, write_tiny_run

import lmkit
import lmkit.tracking.sweep
import lmkit.training.loop
from lmkit.cli.app import app
from lmkit.tracking.sweep import parse_sweep, plan_sweep, run_sweep
from lmkit.training.loop import TrainResult


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A 3-step run of a tiny model on byte-level tinyshakespeare, into tmp_path/sweep."""
    return write_tiny_run(
        tmp_path,
        'batch_size = 4\nsteps = 3\neval_every = 3\neval_batches = 1\nlog_every = 1\ndevice = "cpu"\n'
        f'out_dir = "{tmp_path / "sweep"}"\n',
    )


def sweep(runner, config: Path, spec: str, *args: str):
    return runner.invoke(app, ["train", "--quiet", "--config", str(config), "--sweep", spec, *args])


def test_sweep_trains_one_run_per_value_in_sibling_folders(runner, config, tmp_path):
    result = sweep(runner, config, "optim.lr=1e-3,3e-3", "--set", "optim.warmup_steps=1")
    assert result.exit_code == 0, result.output
    folders = sorted(p.name for p in (tmp_path / "sweep").iterdir())
    assert folders == ["optim.lr=1e-3", "optim.lr=3e-3"]
    for folder, lr in zip(folders, (1e-3, 3e-3), strict=True):
        run = tmp_path / "sweep" / folder
        saved = (run / "config.toml").read_text()
        assert f"lr = {lr!r}" in saved and "warmup_steps = 1" in saved  # the swept value and the --set override
        assert f'out_dir = "{run}"' in saved
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in lines if r["event"] == "train"] == [1, 2, 3]
        assert (run / "last.pt").is_file()
    assert "finished" in result.stdout and "plot the sweep: lmkit runs plot" in result.stderr

    listed = runner.invoke(app, ["runs", "list", str(tmp_path / "sweep"), "--json"])
    assert [(r["name"], r["status"]) for r in json.loads(listed.stdout)["runs"]] == [
        ("optim.lr=1e-3", "finished"),
        ("optim.lr=3e-3", "finished"),
    ]
    compared = json.loads(runner.invoke(app, ["runs", "compare", str(tmp_path / "sweep"), "--json"]).stdout)
    assert compared["differences"]["optim.lr"] == [1e-3, 3e-3]


def test_a_diverging_run_does_not_stop_the_sweep(runner, config, tmp_path, monkeypatch):
    make_loss_nan_at_call(monkeypatch, 2)  # the second step of the first run
    result = sweep(runner, config, "train.seed=1,2")
    assert result.exit_code == 0, result.output
    assert "diverged" in result.stdout and "finished" in result.stdout
    assert not (tmp_path / "sweep" / "train.seed=1" / "last.pt").exists()
    assert (tmp_path / "sweep" / "train.seed=2" / "last.pt").is_file()


def test_ctrl_c_stops_the_sweep_after_the_current_run(config, monkeypatch):
    started = []

    def interrupted_run(config_path, overrides, resume, until_step, show_progress, sinks=()):
        started.append(overrides)
        return TrainResult(1, 3, 64, 5.0, None, None, 0.1, None, Path("x/last.pt"), True, 1000)

    monkeypatch.setattr(lmkit.tracking.sweep, "train_from_files", interrupted_run)
    plan = plan_sweep(config, [], "optim.lr=1e-3,2e-3,3e-3")
    outcomes = run_sweep(config, plan, show_progress=False)
    assert len(started) == 1 and [o.status for o in outcomes] == ["interrupted"]


def test_parse_sweep_splits_values_but_not_lists():
    assert parse_sweep("optim.lr=1e-4, 3e-4,1e-3") == ("optim.lr", ["1e-4", "3e-4", "1e-3"])
    assert parse_sweep("optim.betas=[0.9, 0.95],[0.9, 0.99]") == ("optim.betas", ["[0.9, 0.95]", "[0.9, 0.99]"])


def test_list_values_get_folders_that_hold_them(config, tmp_path):
    plan = plan_sweep(config, [], "optim.betas=[0.9, 0.95],[0.9, 0.99]")
    assert [run.out_dir.name for run in plan] == ["optim.betas=_0.9__0.95_", "optim.betas=_0.9__0.99_"]


@pytest.mark.parametrize(
    ("spec", "messages"),
    [
        ("optim.lr", ["expected TABLE.KEY=V1,V2,..."]),
        ("lr=1e-3,3e-3", ["expected TABLE.KEY=V1,V2,..."]),
        ("optim.lr=1e-3,,3e-3", ["a value is empty"]),
        # An error the swept value causes names the value, not the TOML file.
        ("optim.lrr=1e-3,3e-3", ["--sweep optim.lrr=1e-3: unknown key optim.lrr; did you mean optim.lr?"]),
        ("optim.lr=1e-3,-1", ["--sweep optim.lr=-1: optim.lr: Input should be greater than 0"]),
        ("train.steps=2,many", ["--sweep train.steps=many:", "train.steps: Input should be a valid integer"]),
        ("optim.lr=1e-3,1e-3", ["two values give the same run folder"]),
        ("train.out_dir=a,b", ["cannot sweep train.out_dir"]),
    ],
)
def test_bad_sweep_specs_fail_before_any_run(runner, config, tmp_path, spec, messages):
    result = sweep(runner, config, spec)
    for message in messages:
        assert_input_error(result, message)
    assert not (tmp_path / "sweep").exists()


def test_sweep_needs_a_config_no_resume_and_fresh_folders(runner, config, tmp_path):
    assert_input_error(runner.invoke(app, ["train", "--sweep", "optim.lr=1e-3"]), "--sweep needs --config run.toml")
    assert_input_error(
        sweep(runner, config, "optim.lr=1e-3", "--resume", str(tmp_path / "x.pt")), "cannot be combined with --resume"
    )
    assert sweep(runner, config, "optim.lr=2e-3").exit_code == 0
    assert_input_error(sweep(runner, config, "optim.lr=1e-3,2e-3"), "optim.lr=2e-3 already holds a run")
    assert not (tmp_path / "sweep" / "optim.lr=1e-3").exists()
