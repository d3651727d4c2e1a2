"""Token data in shards: one .npy, a folder or a glob; sampling across shards, resume, and bad shards."""

from pathlib import Path

import numpy as np
import pytest
import torch

from lmkit.cli.app import app
from lmkit.training.data import TokenShards, get_batch, load_shards, validation_batches
from tests.helpers import assert_input_error, write_tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")


def _split_into_shards(folder: Path, ids: np.ndarray, parts: int) -> Path:
    """Write `ids` as `parts` consecutive shards folder/shard_000.npy, ... and return the folder."""
    folder.mkdir()
    for index, part in enumerate(np.array_split(ids, parts)):
        np.save(folder / f"shard_{index:03d}.npy", part)
    return folder


def test_one_array_draws_what_uniform_starts_over_it_give():
    tokens = np.arange(1000, dtype=np.uint16) * 7 % 997
    inputs, targets = get_batch(tokens, 16, 12, "cpu", torch.Generator().manual_seed(3))
    # The sampler of one array, written out: starts uniform over [0, len - context), windows of context + 1.
    starts = torch.randint(0, len(tokens) - 12, (16,), generator=torch.Generator().manual_seed(3)).tolist()
    expected = torch.tensor(np.stack([tokens[s : s + 13] for s in starts]).astype(np.int64))
    assert torch.equal(inputs, expected[:, :-1]) and torch.equal(targets, expected[:, 1:])
    batches = validation_batches(tokens, 4, 12, 2)
    assert batches[0][0, 0].item() == tokens[0] and batches[-1][-1, -1].item() == tokens[-1]


def test_windows_stay_inside_one_shard_and_cover_every_start_of_every_shard():
    # Shard k holds ids k*1000 + 0..len-1: a window's ids tell its shard and its start.
    lengths = [20, 5, 33]  # the middle shard is shorter than a window and contributes none
    shards = TokenShards(tuple(np.arange(n, dtype=np.int64) + 1000 * k for k, n in enumerate(lengths)), ("a", "b", "c"))
    seen = set()
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        inputs, targets = get_batch(shards, 8, 9, "cpu", generator)
        window = torch.cat([inputs, targets[:, -1:]], dim=1)
        for row in window.tolist():
            shard, start = divmod(row[0], 1000)
            assert row == [1000 * shard + start + i for i in range(10)]  # contiguous, one shard
            seen.add((shard, start))
    assert seen == {(0, s) for s in range(11)} | {(2, s) for s in range(24)}
    val = torch.cat(validation_batches(shards, 5, 9, 7))
    assert val[0, 0].item() == 0 and val[-1, -1].item() == 2032  # first and last window of all the shards


def test_folder_and_glob_load_shards_in_sorted_order(tmp_path):
    folder = _split_into_shards(tmp_path / "shards", np.arange(100, dtype=np.uint16), 3)
    (folder / "notes.txt").write_text("not a shard")
    by_folder, by_glob = load_shards(folder), load_shards(str(folder / "shard_*.npy"))
    assert by_folder.names == by_glob.names == tuple(str(folder / f"shard_{i:03d}.npy") for i in range(3))
    assert np.array_equal(np.concatenate(by_folder.arrays), np.arange(100))
    assert isinstance(by_folder.arrays[0], np.memmap)


def test_a_run_on_shards_resumes_bitwise_and_refuses_other_shards(runner, tmp_path):
    config = write_tiny_run(tmp_path, "batch_size = 4\nsteps = 6\neval_every = 3\nckpt_every = 3\n"
                            f'out_dir = "{tmp_path / "straight"}"\ndevice = "cpu"\n')  # fmt: skip
    shards = _split_into_shards(tmp_path / "shards", np.load(tmp_path / "train.npy"), 4)
    text = config.read_text().replace(str(tmp_path / "train.npy"), str(shards))
    config.write_text(text)
    assert runner.invoke(app, ["train", "--quiet", "--config", str(config)]).exit_code == 0
    broken = tmp_path / "broken.toml"
    broken.write_text(text.replace(str(tmp_path / "straight"), str(tmp_path / "broken")))
    args = ["train", "--quiet", "--config", str(broken)]
    assert runner.invoke(app, [*args, "--until-step", "3"]).exit_code == 0
    assert runner.invoke(app, ["train", "--quiet", "--resume", str(tmp_path / "broken" / "last.pt")]).exit_code == 0
    a, b = (torch.load(tmp_path / run / "last.pt", weights_only=True) for run in ("straight", "broken"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["train_shards"][1] == ["shard_001.npy", len(np.load(shards / "shard_001.npy"))]

    (shards / "shard_001.npy").unlink()
    result = runner.invoke(app, [*args, "--resume", str(tmp_path / "broken" / "last.pt")])
    assert_input_error(result, "is not what the run started on: shard 2 is shard_002.npy")


@pytest.mark.parametrize("bad", ["empty folder", "no match", "dtype", "vocabulary"])
def test_bad_shards_get_one_line_naming_them(runner, tmp_path, bad):
    config = write_tiny_run(tmp_path, f'batch_size = 2\nsteps = 1\nout_dir = "{tmp_path / "out"}"\ndevice = "cpu"\n')
    shards = _split_into_shards(tmp_path / "shards", np.load(tmp_path / "train.npy"), 2)
    spec, message = {
        "empty folder": (tmp_path / "empty", f"train data folder {tmp_path / 'empty'} holds no .npy shards"),
        "no match": (tmp_path / "nothing_*.npy", f"train data pattern {tmp_path / 'nothing_*.npy'} matches no files"),
        "dtype": (shards, f"train data shard {shards / 'shard_001.npy'} holds int32 ids, unlike"),
        "vocabulary": (shards, f"train data shard {shards / 'shard_001.npy'} holds token id 256, outside"),
    }[bad]
    (tmp_path / "empty").mkdir()
    if bad == "dtype":
        np.save(shards / "shard_001.npy", np.zeros(100, dtype=np.int32))
    if bad == "vocabulary":
        np.save(shards / "shard_001.npy", np.full(100, 256, dtype=np.uint16))
    config.write_text(config.read_text().replace(str(tmp_path / "train.npy"), str(spec)))
    result = runner.invoke(app, ["train", "--quiet", "--config", str(config)])
    assert_input_error(result, message)
    assert not (tmp_path / "out" / "last.pt").exists()


def test_document_packing_over_shards_never_joins_a_shard_end_to_the_next_shard():
    from lmkit.training.packing import DocumentPacker

    sep = 0
    # Shard 0 ends without a separator: its last document is [1, 1], not run on into shard 1.
    shards = TokenShards((np.array([1, 1, 1, sep] * 5 + [1, 1]), np.array([2, 2, sep] * 7 + [2])), ("a.npy", "b.npy"))
    packer = DocumentPacker(shards, sep, context_length=9)
    assert packer.lengths.tolist() == [4] * 5 + [2] + [3] * 7 + [1]
    window = packer.draw(12, torch.Generator().manual_seed(0))
    assert window.shape == (12, 10) and set(window[:, 0].tolist()) <= {1, 2}  # rows start at a document
