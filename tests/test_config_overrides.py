"""Run-config overrides as a new user meets them: min_lr_ratio, errors that name the override, unsetting a key."""

import pytest
from helpers import assert_input_error, write_tiny_run

from lmkit.cli.app import app
from lmkit.errors import InputError
from lmkit.training.config import OverrideError, load_config, to_toml

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def config(tmp_path):
    """A tiny run config naming total_tokens and an explicit min_lr, as many users' configs do."""
    path = write_tiny_run(tmp_path, f'batch_size = 2\ntotal_tokens = 3200\nout_dir = "{tmp_path / "out"}"\n')
    path.write_text(path.read_text().replace("[optim]\nlr = 1e-3\n", "[optim]\nlr = 6e-3\nmin_lr = 6e-4\n"))
    return path


def test_min_lr_ratio_follows_lr_and_survives_the_resolved_config(tmp_path):
    path = write_tiny_run(tmp_path, "batch_size = 2\nsteps = 4\n")
    path.write_text(path.read_text().replace("lr = 1e-3\n", "lr = 1e-3\nmin_lr_ratio = 0.1\n"))
    config = load_config(path, ["optim.lr=1e-4"])
    assert config.optim.final_lr == pytest.approx(1e-5)
    resolved = tmp_path / "resolved.toml"
    resolved.write_text(to_toml(config))
    assert load_config(resolved) == config  # the ratio, not a frozen min_lr, is written back


def test_min_lr_and_min_lr_ratio_exclude_each_other(tmp_path):
    path = write_tiny_run(tmp_path, "batch_size = 2\nsteps = 4\n")
    path.write_text(path.read_text().replace("lr = 1e-3\n", "lr = 1e-3\nmin_lr = 1e-4\nmin_lr_ratio = 0.1\n"))
    with pytest.raises(InputError, match="give one of min_lr and min_lr_ratio"):
        load_config(path)
    # An override of one replaces the other from the file.
    assert load_config(path, ["optim.min_lr_ratio=0.5"]).optim.final_lr == pytest.approx(5e-4)


def test_an_error_caused_by_an_override_names_the_override_not_the_file(runner, config):
    with pytest.raises(OverrideError) as err:
        load_config(config, ["optim.lr=1e-4"])
    assert str(err.value).startswith("--set optim.lr=1e-4: ") and "min_lr (0.0006) is above lr (0.0001)" in str(
        err.value
    )
    assert str(config) not in str(err.value)
    result = runner.invoke(app, ["train", "--config", str(config), "--set", "optim.lr=1e-4"])
    assert_input_error(result, "--set optim.lr=1e-4: optim: min_lr (0.0006) is above lr (0.0001)")
    assert str(config) not in result.stderr
    result = runner.invoke(app, ["train", "--config", str(config), "--set", "train.log_evry=3"])
    assert_input_error(result, "--set train.log_evry=3: unknown key train.log_evry; did you mean train.log_every?")
    # A key of another table is named with the table it belongs in.
    result = runner.invoke(app, ["train", "--config", str(config), "--set", "train.warmup_steps=2"])
    assert_input_error(
        result, "--set train.warmup_steps=2: unknown key train.warmup_steps: warmup_steps belongs in [optim]"
    )
    # An error of the file itself still names the file.
    config.write_text(config.read_text().replace("lr = 6e-3", "lr = -1"))
    assert_input_error(runner.invoke(app, ["train", "--config", str(config)]), f"{config}: optim.lr: Input should")


def test_a_sweep_over_lr_works_with_min_lr_ratio_and_names_the_value_otherwise(runner, config, tmp_path):
    result = runner.invoke(app, ["train", "-q", "--config", str(config), "--sweep", "optim.lr=1e-3,1e-4"])
    assert_input_error(result, "--sweep optim.lr=1e-4: optim: min_lr (0.0006) is above lr (0.0001)")
    assert str(config) not in result.stderr
    ratio = ["--set", "optim.min_lr_ratio=0.1", "--set", "train.steps=1", "--set", "train.eval_batches=1"]
    result = runner.invoke(app, ["train", "-q", "--config", str(config), "--sweep", "optim.lr=1e-3,1e-4", *ratio])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "optim.lr=1e-4" / "last.pt").exists()


def test_set_steps_replaces_total_tokens_and_an_empty_value_unsets(config):
    assert load_config(config, ["train.steps=1"]).total_steps == 1
    unset = load_config(config, ["train.total_tokens=", "train.steps=2"])
    assert unset.train.total_tokens is None and unset.total_steps == 2
    assert load_config(config, ["optim.min_lr="]).optim.final_lr == pytest.approx(6e-4)  # back to lr / 10
    with pytest.raises(InputError, match="give exactly one of train.steps and train.total_tokens"):
        load_config(config, ["train.total_tokens="])
    path = config.parent / "both.toml"  # unsetting a key leaves its alternative alone
    path.write_text(config.read_text().replace("[optim]\nlr = 6e-3\nmin_lr = 6e-4\n", "[optim]\nlr = 6e-3\n"))
    path.write_text(path.read_text().replace("[optim]\n", "[optim]\nmin_lr_ratio = 0.5\nmin_lr = 1e-3\n"))
    assert load_config(path, ["optim.min_lr="]).optim.final_lr == pytest.approx(3e-3)
