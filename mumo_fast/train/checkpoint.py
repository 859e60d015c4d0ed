"""Atomic checkpoints, RNG state capture, and the small final model file."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_NAME = "checkpoint.ckpt"
MODEL_NAME = "model.pt"


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same folder, synced to disk, then os.replace
    and a sync of the folder: never a torn file, and once this returns the new file
    survives a power loss (without the folder's sync the rename itself may be lost,
    and with it, on some file systems, both the old file and the new)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename into it) to disk. Where folders cannot be opened
    (Windows), there is nothing to do: NTFS journals the rename itself."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except (PermissionError, IsADirectoryError):
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state(data_generator: torch.Generator | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if data_generator is not None:
        state["data"] = data_generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], data_generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if data_generator is not None:
        if "data" not in state:
            raise ValueError("checkpoint holds no data-generator state")
        data_generator.set_state(state["data"].to(data_generator.get_state().device))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_file(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint or model file on CPU, with a clear error when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint or model file: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001  (any unpickling failure means "not ours")
        raise ValueError(f"{path} is not a mumo_fast checkpoint or model file: {e}") from e
    if not isinstance(obj, dict) or "state_dict" not in obj or "config" not in obj:
        raise ValueError(f"{path} is not a mumo_fast checkpoint or model file")
    return obj


def resolve_model_path(path: str | os.PathLike) -> Path:
    """A run folder means its model.pt (or, before training ends, its checkpoint)."""
    path = Path(path)
    if path.is_dir():
        for name in (MODEL_NAME, CHECKPOINT_NAME):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path} holds neither {MODEL_NAME} nor {CHECKPOINT_NAME}")
    if not path.exists():
        raise FileNotFoundError(f"no such run folder or model file: {path}")
    return path


def learner_class(config: dict[str, Any]) -> type:
    """The class a stored config builds: ``MetaLearner``, or the one its
    ``"learner_class"`` names as ``"module:Class"`` (a domain's own learner, e.g.
    navigation's policy-gradient learner; imported by name so that train/ imports no domain)."""
    name = config.get("learner_class")
    if name is None:
        from ..meta import MetaLearner

        return MetaLearner
    import importlib

    module, _, cls = str(name).partition(":")
    if not module.startswith("mumo_fast.") or not cls:
        raise ValueError(f"config['learner_class'] must name a mumo_fast class, got {name!r}")
    return getattr(importlib.import_module(module), cls)


def load_learner(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """The trained learner stored at `path` (run folder, model.pt or checkpoint), eval mode:
    a MetaLearner, or the class its config's ``"learner_class"`` names."""
    obj = load_file(resolve_model_path(path))
    learner = learner_class(obj["config"]).from_config(obj["config"])
    learner.load_state_dict(obj["state_dict"])
    return learner.to(device).eval()
