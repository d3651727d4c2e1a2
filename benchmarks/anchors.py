"""What the benchmarks share: running the plain-PyTorch anchor (`ref_model.py`) and reading its tokens/s."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def ref_model_tokens_per_s(anchor_dir: Path, batch: int, env: dict[str, str]) -> float:
    """Run `ref_model.py BATCH` from `anchor_dir` in a subprocess with `env` and return its tokens/s."""
    out = subprocess.run(
        [sys.executable, str(Path(anchor_dir) / "ref_model.py"), str(batch)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    match = re.search(r"([\d.]+) tokens/s", out)
    if match is None:
        raise RuntimeError(f"could not read tokens/s from the anchor's output: {out!r}")
    return float(match.group(1))
