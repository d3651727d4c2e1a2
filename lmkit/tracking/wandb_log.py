"""Optional Weights & Biases logging: every metrics.jsonl event mirrored to a W&B run.

Asked for with `train.wandb_project` in the run config (`lmkit train` passes `wandb_sink` to the trainer as
a metrics sink); wandb itself is not a dependency of lmkit (`pip install wandb`). The W&B run id is kept in
the run folder, so a resumed run logs to the same W&B run.
"""

from __future__ import annotations

import importlib
import secrets
from pathlib import Path
from typing import Any

from lmkit.errors import InputError
from lmkit.fileio import atomic_write
from lmkit.training.config import RunConfig

RUN_ID_FILE = "wandb-run-id"


class WandbMirror:
    """Sends each metrics event to W&B as `{event}/{field}` values at the event's step."""

    def __init__(self, project: str, out_dir: Path, config: dict[str, Any]) -> None:
        try:
            self._wandb = importlib.import_module("wandb")
        except ImportError:
            raise InputError(
                f"train.wandb_project is {project!r} but wandb is not installed: pip install wandb "
                "(or remove wandb_project from the config)"
            ) from None
        id_file = out_dir / RUN_ID_FILE
        if id_file.exists():
            run_id = id_file.read_text().strip()
        else:
            run_id = secrets.token_hex(4)
            with atomic_write(id_file, "w") as handle:
                handle.write(run_id)
        self._run = self._wandb.init(
            project=project, name=out_dir.name, id=run_id, resume="allow", config=config, dir=str(out_dir)
        )

    def log(self, event: str, fields: dict[str, float | int | None]) -> None:
        """Log one event's values (None dropped) at its step."""
        values = {f"{event}/{name}": value for name, value in fields.items() if name != "step" and value is not None}
        self._run.log(values, step=fields["step"])

    def finish(self) -> None:
        """Close the W&B run."""
        self._run.finish()


def wandb_sink(config: RunConfig) -> WandbMirror | None:
    """The run's W&B mirror when its config names a `train.wandb_project` (None otherwise)."""
    project = config.train.wandb_project
    if not project:
        return None
    return WandbMirror(project, Path(config.train.out_dir), config.model_dump(mode="json"))
