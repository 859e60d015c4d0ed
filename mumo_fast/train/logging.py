"""JSON-lines metrics log, mirrored to TensorBoard when it is installed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def truncate_log(path: str | os.PathLike, last_iteration: int) -> None:
    """Drop records past `last_iteration` (written after the checkpoint a resume starts from)."""
    records = [r for r in read_log(path) if r.get("iteration", 0) <= last_iteration]
    tmp = Path(f"{path}.tmp")
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(tmp, path)


class MetricsLogger:
    """Appends one JSON object per line; `tensorboard=True` also writes event files."""

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = True):
        self.path = Path(run_dir) / "log.jsonl"
        self._file = open(self.path, "a")  # noqa: SIM115  (closed in close())
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                pass
            else:
                self._writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def log(self, iteration: int, **values: float) -> None:
        record = {"iteration": iteration, **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self._writer.add_scalar(key, value, iteration)

    def close(self) -> None:
        self._file.close()
        if self._writer is not None:
            self._writer.close()
