"""HF Llama folders on disk: export_hf writes one from a checkpoint, import_hf reads one into a checkpoint.

The weights are read and written with the `safetensors` package (sharded, with an index, as transformers
does); the JSON files and the folder itself go through lmkit.fileio.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from lmkit.checkpoint import END_OF_TEXT, load_inference_checkpoint, parameter_count, write_checkpoint
from lmkit.errors import InputError
from lmkit.fileio import (
    check_output_path,
    full_disk_reported,
    read_json,
    temporary_folder,
    usual_permissions,
    write_json,
)
from lmkit.interop.hf.config import (
    check_exportable,
    hf_config,
    lmkit_tokenizer_json,
    model_config_from_hf,
    tokenizer_config,
)
from lmkit.interop.hf.tensors import expected_hf_shapes, from_hf_state, is_ignored_hf_name, to_hf_state
from lmkit.model.config import ModelConfig
from lmkit.progress import progress_bar
from lmkit.tokenizer.formats import from_hf_json, special_token_ids
from lmkit.tokenizer.tokenizer import Tokenizer

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9  # transformers' save_pretrained default ("5GB")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def shard(state: dict[str, torch.Tensor], max_shard_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Tensors in order, cut into consecutive groups of at most max_shard_bytes (a bigger tensor alone)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        if shards[-1] and size + tensor.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += tensor.nbytes
    return shards


def _nbytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.nbytes for t in tensors)


def write_weights(
    folder: Path, state: dict[str, torch.Tensor], max_shard_bytes: int, progress: bool = False
) -> list[str]:
    """model.safetensors, or model-0000i-of-0000n.safetensors and the index transformers reads; the file names."""
    from safetensors.torch import save_file

    shards = shard(state, max_shard_bytes)
    names = (
        [WEIGHTS_FILE]
        if len(shards) == 1
        else [f"model-{number:05d}-of-{len(shards):05d}.safetensors" for number in range(1, len(shards) + 1)]
    )
    total = _nbytes(state.values())
    with progress_bar("Writing weights", total=total, unit="MB", scale=1e6, enabled=progress) as bar:
        for name, part in zip(names, shards, strict=True):
            save_file(part, folder / name, metadata={"format": "pt"})
            usual_permissions(folder / name, 0o666)  # the safetensors writer makes it 0600, unlike every other file
            bar.advance(_nbytes(part.values()))
    if len(shards) == 1:
        return names
    weight_map = {tensor: name for name, part in zip(names, shards, strict=True) for tensor in part}
    write_json(folder / INDEX_FILE, {"metadata": {"total_size": total}, "weight_map": weight_map})
    return [*names, INDEX_FILE]


def check_output_folder(out: Path, force: bool) -> None:
    """InputError unless `out` can take an export: new, or empty, or any folder with --force."""
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} is a file; give a folder name")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise InputError(f"output folder {out} exists and is not empty; choose a new folder or pass --force")
    if not out.parent.is_dir():
        raise InputError(f"the folder {out.parent} that would hold {out.name} does not exist; create it first")


def _stale_weight_files(out: Path) -> Iterator[Path]:
    """Weight files of an earlier export in `out`, which a new export must not leave beside its own."""
    yield from out.glob("model*.safetensors")
    yield from out.glob(INDEX_FILE)


def _move_into_place(staging: Path, out: Path) -> None:
    """Put the finished files in `out`: one rename for a new or empty folder; file by file over --force."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        staging.rename(out)
        return
    for stale in _stale_weight_files(out):
        stale.unlink()
    for item in staging.iterdir():
        os.replace(item, out / item.name)
    staging.rmdir()


def export_hf(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    dtype: str = "float32",
    force: bool = False,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    progress: bool = False,
) -> dict[str, object]:
    """Write an lmkit checkpoint as a Hugging Face LlamaForCausalLM folder; return what was written.

    The folder holds the weights (safetensors, sharded with an index above max_shard_bytes), config.json,
    generation_config.json, tokenizer.json and tokenizer_config.json. It is built in a temporary folder
    beside `out` and renamed into place, so a failure leaves nothing behind. InputError for a bad
    checkpoint, a dtype other than float32/bfloat16/float16, a model HF Llama cannot express, or an
    output folder that exists and is not empty (unless `force`). `progress` draws a bar on stderr.
    """
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if max_shard_bytes <= 0:
        raise InputError(f"the shard size must be positive, got {max_shard_bytes} bytes")
    out = Path(out)
    stored = load_inference_checkpoint(checkpoint)
    config = stored.model_config
    check_exportable(config)
    check_output_folder(out, force)
    tokenizer_obj = json.loads(stored.tokenizer_json)
    vocab, _, special_tokens = from_hf_json(tokenizer_obj, source=f"the tokenizer in {checkpoint}")
    special_ids = special_token_ids(vocab, special_tokens)
    eos_id = special_ids.get(END_OF_TEXT)
    state = to_hf_state(stored.state_dict, config, DTYPES[dtype])
    with full_disk_reported(out):
        staging = temporary_folder(out)
        try:
            files = write_weights(staging, state, max_shard_bytes, progress)
            write_json(staging / "config.json", hf_config(config, eos_id, dtype))
            write_json(staging / "generation_config.json", {"bos_token_id": None, "eos_token_id": eos_id})
            write_json(staging / "tokenizer.json", tokenizer_obj)
            write_json(
                staging / "tokenizer_config.json", tokenizer_config(special_tokens, special_ids, config.context_length)
            )
            _move_into_place(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return {
        "checkpoint": str(checkpoint),
        "out": str(out),
        "dtype": dtype,
        "weight_files": files,
        "files": sorted(p.name for p in out.iterdir()),
        "parameters": sum(t.numel() for t in state.values()),
        "step": stored.step,
    }


# --- import ------------------------------------------------------------------------------------------------


def _read_json_file(path: Path, what: str) -> dict:
    """A JSON file of the folder; InputError saying which file the folder lacks, if it does."""
    if not path.is_file():
        raise InputError(f"{path.parent} has no {path.name}; is it a Hugging Face model folder?")
    return read_json(path, what)


def check_source_folder(src: Path) -> None:
    """InputError for a path that is not a local folder; a Hub id gets told to download first."""
    if src.is_dir():
        return
    if src.exists():
        raise InputError(f"{src} is a file; give the folder holding config.json and the safetensors weights")
    looks_like_hub_id = re.fullmatch(r"[\w.-]+/[\w.-]+", str(src)) is not None
    if looks_like_hub_id:
        raise InputError(
            f"{src} is not a local folder; lmkit does not download from the Hub: run "
            f"`huggingface-cli download {src} --local-dir DIR` first, then import DIR"
        )
    raise InputError(f"model folder {src} does not exist")


def weight_files(src: Path) -> list[Path]:
    """The safetensors files of a folder: the shards its index names, or model.safetensors."""
    index = src / INDEX_FILE
    if index.is_file():
        weight_map = _read_json_file(index, "index").get("weight_map")
        if not isinstance(weight_map, dict):
            raise InputError(f"{index} has no weight_map")
        return [src / name for name in dict.fromkeys(weight_map.values())]
    if (src / WEIGHTS_FILE).is_file():
        return [src / WEIGHTS_FILE]
    if any(src.glob("*.bin")) or any(src.glob("*.pt")):
        raise InputError(
            f"{src} holds PyTorch pickle weights, which lmkit does not load (they can run code); "
            "convert them to safetensors first (e.g. save_pretrained(..., safe_serialization=True))"
        )
    raise InputError(f"{src} has no {WEIGHTS_FILE} or {INDEX_FILE}")


def read_hf_weights(src: Path, config: ModelConfig, progress: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor the config needs, from the folder's safetensors files, checked by name and shape first
    (from the file headers, so a bad folder is refused before gigabytes are read)."""
    from safetensors import safe_open

    located = _locate_tensors(src, config)
    total = sum(path.stat().st_size for path in set(located.values()))
    state: dict[str, torch.Tensor] = {}
    with progress_bar("Reading weights", total=total, unit="MB", scale=1e6, enabled=progress) as bar:
        for path in dict.fromkeys(located.values()):
            with safe_open(path, framework="pt") as handle:
                state.update({name: handle.get_tensor(name) for name, where in located.items() if where == path})
            bar.advance(path.stat().st_size)
    return state


def _locate_tensors(src: Path, config: ModelConfig) -> dict[str, Path]:
    """The file holding each tensor the config needs; InputError for an unreadable file or a missing, stray or
    misshapen tensor."""
    from safetensors import SafetensorError, safe_open

    expected = expected_hf_shapes(config)
    located: dict[str, Path] = {}
    for path in weight_files(src):
        if not path.is_file():
            raise InputError(f"{path} (named in {INDEX_FILE}) does not exist")
        try:
            with safe_open(path, framework="pt") as handle:
                for name in handle.keys():
                    if is_ignored_hf_name(name) or (name == "lm_head.weight" and config.tie_embeddings):
                        continue
                    if name not in expected:
                        raise InputError(
                            f"{path} holds {name}, which a Llama model of this config.json has no place for"
                        )
                    shape = tuple(handle.get_slice(name).get_shape())
                    if shape != expected[name]:
                        raise InputError(f"{name} is {shape} in {path}, but config.json makes it {expected[name]}")
                    located[name] = path
        except SafetensorError as err:
            raise InputError(f"{path} is not a readable safetensors file ({err})") from None
    missing = [name for name in expected if name not in located]
    if missing:
        raise InputError(f"{src} is missing the tensor {missing[0]}")
    return located


def import_hf(
    src: str | os.PathLike,
    out: str | os.PathLike,
    force: bool = False,
    context_length: int | None = None,
    progress: bool = False,
    tokenizer: list[str | os.PathLike] | None = None,
) -> dict[str, object]:
    """Read a local Hugging Face Llama folder into an lmkit checkpoint (float32 weights); return what was read.

    The checkpoint holds the model, its config and the tokenizer, so `lmkit generate`, `lmkit ckpt info` and
    `train.init_from` (fine-tuning) take it. `context_length` overrides max_position_embeddings (a smaller
    one keeps RoPE tables and the KV cache small). `tokenizer` (what `Tokenizer.load_any` takes) replaces the
    folder's tokenizer.json, e.g. for a folder without one. InputError, before anything is written, for a missing
    folder, a Hub id, a non-Llama config, a missing or misshapen tensor, a tokenizer lmkit cannot represent,
    or an existing `out` (unless `force`). `progress` draws a bar on stderr.
    """
    src, out = Path(src), Path(out)
    check_source_folder(src)
    check_output_path(out)
    if out.exists() and not force:
        raise InputError(f"{out} exists; choose a new name or pass --force to replace it")
    config = model_config_from_hf(
        _read_json_file(src / "config.json", "config"), str(src / "config.json"), context_length
    )
    tok = _source_tokenizer(src, tokenizer)
    source = " + ".join(map(str, tokenizer)) if tokenizer else str(src / "tokenizer.json")
    tokenizer_json = lmkit_tokenizer_json(tok, source, config.vocab_size)
    state = from_hf_state(read_hf_weights(src, config, progress), config)
    if config.tie_embeddings:
        state["token_embeddings.weight"] = state["lm_head.weight"]  # one tensor under both names, as the model has
    write_checkpoint(
        state,
        None,
        0,
        out,
        tokens_seen=0,
        config={"model": config.model_dump(mode="json")},
        tokenizer_json=tokenizer_json,
        imported_from=str(src),
    )
    return {
        "source": str(src),
        "out": str(out),
        "model": config.model_dump(),
        "parameters": parameter_count(state),
        "tokenizer pattern": tok.pattern,
        "bos token": tok.layout.bos_token or "none",
    }


def _source_tokenizer(src: Path, paths: list[str | os.PathLike] | None) -> Tokenizer:
    """The tokenizer given with --tokenizer, else the folder's tokenizer.json; InputError if neither is there."""
    if paths:
        return Tokenizer.load_any(paths)
    if not (src / "tokenizer.json").is_file():
        raise InputError(
            f"{src} has no tokenizer.json; give the tokenizer with --tokenizer PATH (a tokenizer.json, GPT-2's "
            "vocab.json + merges.txt, or a .toml naming a tiktoken rank file)"
        )
    return Tokenizer.load(src / "tokenizer.json")
