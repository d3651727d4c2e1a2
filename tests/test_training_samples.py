"""Samples while training (train.sample_every): shown, kept in samples.jsonl, and without effect on the run."""

import json

import pytest
import torch
from helpers import assert_input_error, write_tiny_run

from lmkit.cli.app import app

pytestmark = pytest.mark.usefixtures("one_thread")


def test_samples_are_shown_and_kept_and_leave_the_run_unchanged(runner, tmp_path):
    plain = write_tiny_run(tmp_path, f'steps = 6\nbatch_size = 2\nout_dir = "{tmp_path / "plain"}"\n')
    assert runner.invoke(app, ["train", "-q", "--config", str(plain)]).exit_code == 0
    sampled = ["--set", f"train.out_dir={tmp_path / 'sampled'}", "--set", "train.sample_every=4"]
    sampled += ["--set", "train.sample_prompt=ROMEO:", "--set", "train.sample_tokens=12"]
    result = runner.invoke(app, ["train", "--config", str(plain), *sampled])
    assert result.exit_code == 0, result.output

    samples = [json.loads(line) for line in (tmp_path / "sampled" / "samples.jsonl").read_text().splitlines()]
    assert [sample["step"] for sample in samples] == [4, 6]  # every 4 steps, and at the end
    assert all(sample["prompt"] == "ROMEO:" and len(sample["text"]) <= 12 for sample in samples)
    for sample in samples:  # a byte-level model: at most 12 characters, shown under a header line
        assert f"step {sample['step']}/6 | sample\nROMEO:{sample['text']}" in result.stderr
    first, second = (torch.load(tmp_path / run / "last.pt", weights_only=True) for run in ("plain", "sampled"))
    assert all(torch.equal(first["model"][name], second["model"][name]) for name in first["model"])
    assert all(first["rng"][key].equal(second["rng"][key]) for key in ("torch", "batches"))


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("sample_every = 0", "train.sample_every: Input should be greater than 0"),
        ("sample_tokens = 0", "train.sample_tokens: Input should be greater than or equal to 1"),
        ('sample_prompt = ""', "train.sample_prompt: String should have at least 1 character"),
    ],
)
def test_bad_sample_settings_are_refused(runner, tmp_path, setting, message):
    config = write_tiny_run(tmp_path, f'steps = 2\nbatch_size = 2\nout_dir = "{tmp_path / "r"}"\n{setting}\n')
    assert_input_error(runner.invoke(app, ["train", "--config", str(config)]), message)
    assert not (tmp_path / "r").exists()
