"""Omniglot from a local folder: checked, resized to 28x28 once and cached.

Two forms of the data are read, whichever the folder holds:

* the ``.npz`` form: ``images_background.npz`` and ``images_evaluation.npz`` (bool
  arrays ``[characters, 20, 105, 105]``, True = background) with ``characters.csv``
  (alphabet and character folder of every character id);
* the official archives of Lake et al.: ``images_background.zip``,
  ``images_evaluation.zip`` (or any ``images_*.zip`` in that layout,
  ``<top>/<Alphabet>/characterNN/<id>_<drawer>.png``), read member by member from the
  archive: nothing is extracted to disk, and a member whose name could escape a folder
  (absolute, ``..``) is refused.

Character ids follow the dataset's numbering (1..964 background, 965..1623
evaluation). The Vinyals et al. split used here is exactly "ids 1..1200 train, 1201..1623
test" (1200 and 423 characters; the train part holds Vinyals' train and validation
characters). MAML and the MuMoMAML paper used Finn et al.'s seeded random split of the
character folders, which depends on directory order and cannot be rebuilt exactly.

Resampling: the 105x105 images, ink = 1, are averaged over 3.75x3.75-pixel boxes
(``torch.nn.functional.interpolate(mode="area")``), giving anti-aliased grey levels,
stored as uint8 (0 background, 255 ink). (MAML's own preprocessing ends up with
nearest-neighbour binary images, since Pillow ignores the filter for 1-bit images.)
The result is cached in ``$MUMO_FAST_CACHE`` (default ``~/.cache/mumo_fast``) under a
name derived from the source files' sizes and times, so it is computed once.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SIZE = 28
SOURCE_SIZE = 105
DRAWERS = 20
NUM_CHARACTERS = 1623
TRAIN_CHARACTERS = 1200  # ids 1..1200: Vinyals train + validation; 1201..1623: test
RESAMPLING = "area"  # see the module docstring
CACHE_VERSION = 1
ENV_DATA = "MUMO_FAST_DATA"
ENV_CACHE = "MUMO_FAST_CACHE"

NPZ_FILES = {"images_background.npz": (964, 1), "images_evaluation.npz": (659, 965)}
CSV_FILE = "characters.csv"
# sha256 of the files as distributed (the .npz conversion and the official small archives)
KNOWN_SHA256 = {
    "images_background.npz": "8bf84167413cd00beacdce3fe582f780ab538d8dbef043a6d688f2527bbce199",
    "images_evaluation.npz": "0b84c7ffd94c4841c0040e529c86a82eaaccb986d8eadad5673f7991b7475276",
    "characters.csv": "ee69eebb39e30742612cab0a3f6a0429cf01e486aedbd399e80e9fa6782716d8",
    "images_background_small1.zip": "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4",
    "images_background_small2.zip": "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f",
}
SPLITS = ("train", "test")

_PNG = re.compile(r"^(\d{4})_(\d{2})\.png$")


class DataError(ValueError):
    """Missing, broken or incomplete Omniglot data (the message names the file or what is missing)."""


@dataclass
class Omniglot:
    """All characters found, resized: ``images`` uint8 [C, 20, 28, 28] (255 = ink),
    ``ids`` [C] character ids (ascending), ``alphabets`` and ``characters`` (folder
    names) per character, and ``source`` (the folder read)."""

    images: torch.Tensor
    ids: torch.Tensor
    alphabets: list[str]
    characters: list[str]
    source: str

    def split_mask(self, split: str) -> torch.Tensor:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return self.ids <= TRAIN_CHARACTERS if split == "train" else self.ids > TRAIN_CHARACTERS

    def missing(self, split: str) -> list[int]:
        """Character ids of ``split`` that the folder does not hold."""
        have = set(self.ids.tolist())
        return [i for i in split_ids(split) if i not in have]

    def completeness(self) -> str:
        """One line per split: complete, or how many characters are missing."""
        lines = []
        for split in SPLITS:
            total, missing = len(split_ids(split)), len(self.missing(split))
            state = "complete" if not missing else f"incomplete, {total - missing} of {total}"
            lines.append(f"{split} split ({total} characters): {state}")
        return "; ".join(lines)

    def split(self, split: str) -> Omniglot:
        """The characters of ``split``; a DataError naming what is missing if any are."""
        missing = self.missing(split)
        if missing:
            where = (
                "images_background.zip and images_evaluation.zip"
                if split == "train"
                else "images_evaluation.zip"
            )
            raise DataError(
                f"the Omniglot {split} split needs character ids {_ranges(split_ids(split))}, "
                f"but {self.source} lacks {len(missing)} of them ({_ranges(missing)}); "
                f"{where} (or the .npz form) hold them"
            )
        keep = self.split_mask(split)
        idx = keep.nonzero().flatten().tolist()
        return Omniglot(
            self.images[keep],
            self.ids[keep],
            [self.alphabets[i] for i in idx],
            [self.characters[i] for i in idx],
            self.source,
        )


def split_ids(split: str) -> range:
    """The character ids of a split (see the module docstring)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "train":
        return range(1, TRAIN_CHARACTERS + 1)
    return range(TRAIN_CHARACTERS + 1, NUM_CHARACTERS + 1)


def _ranges(ids) -> str:
    """[1, 2, 3, 7] -> '1-3, 7' (at most a few ranges, then '...')."""
    ids = sorted(ids)
    parts: list[str] = []
    start = prev = None
    for i in [*ids, None]:
        if i is not None and prev is not None and i == prev + 1:
            prev = i
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = i
    return ", ".join(parts[:6]) + (", ..." if len(parts) > 6 else "")


# -- locating and checking ---------------------------------------------------------------
def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """``data_dir``, else ``$MUMO_FAST_DATA``; a folder holding an ``omniglot`` folder
    means that one."""
    if data_dir is None:
        data_dir = os.environ.get(ENV_DATA)
        if not data_dir:
            raise DataError(
                f"no Omniglot folder given: pass --data-dir (or set {ENV_DATA}) to a folder "
                "holding images_background.npz and images_evaluation.npz with characters.csv, "
                "or the official images_background.zip and images_evaluation.zip"
            )
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DataError(f"Omniglot folder {path} does not exist")
    if not _has_data(path) and _has_data(path / "omniglot"):
        path = path / "omniglot"
    return path


def _has_data(path: Path) -> bool:
    return path.is_dir() and (
        any((path / n).is_file() for n in NPZ_FILES) or any(path.glob("images_*.zip"))
    )


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_known(path: Path) -> None:
    want = KNOWN_SHA256.get(path.name)
    if want is not None and sha256(path) != want:
        raise DataError(
            f"{path} is damaged or not the distributed file: its sha256 differs from {want}"
        )


def _sources(folder: Path) -> tuple[str, list[Path]]:
    npz = [folder / n for n in NPZ_FILES if (folder / n).is_file()]
    if npz:
        missing = [n for n in (*NPZ_FILES, CSV_FILE) if not (folder / n).is_file()]
        if missing:
            raise DataError(
                f"{folder} holds the .npz form of Omniglot but lacks {', '.join(missing)} "
                "(all of images_background.npz, images_evaluation.npz and characters.csv "
                "are needed)"
            )
        return "npz", [*npz, folder / CSV_FILE]
    zips = sorted(folder.glob("images_*.zip"))
    if zips:
        return "zip", zips
    raise DataError(
        f"{folder} holds no Omniglot data: expected images_background.npz, "
        "images_evaluation.npz and characters.csv, or images_background.zip and "
        "images_evaluation.zip"
    )


# -- reading -----------------------------------------------------------------------------
def _resize(ink: torch.Tensor) -> torch.Tensor:
    """ink float [n, 105, 105] in [0, 1] -> uint8 [n, 28, 28]."""
    small = F.interpolate(ink[:, None], size=(IMAGE_SIZE, IMAGE_SIZE), mode=RESAMPLING)[:, 0]
    return (small * 255).round_().to(torch.uint8)


def _read_npz(files: list[Path]) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    meta: dict[int, tuple[str, str]] = {}
    csv_path = files[-1]
    _check_known(csv_path)
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            meta[int(row["char_id"])] = (row["alphabet"], row["character"])
    images, ids = [], []
    for path in files[:-1]:
        _check_known(path)
        count, first = NPZ_FILES[path.name]
        try:
            with np.load(path, allow_pickle=False) as z:
                raw = z["images"]
        except Exception as e:  # noqa: BLE001  (any failure to read means a broken file)
            raise DataError(f"{path} cannot be read as an .npz file: {e}") from e
        want = (count, DRAWERS, SOURCE_SIZE, SOURCE_SIZE)
        if raw.shape != want or raw.dtype != np.bool_:
            raise DataError(
                f"{path}: 'images' must be bool with shape {want}, got {raw.dtype} {raw.shape}"
            )
        for start in range(0, count, 64):  # chunks: the float copy of all images is 1.4 GB
            block = torch.from_numpy(~raw[start : start + 64]).float()
            images.append(_resize(block.flatten(0, 1)).view(-1, DRAWERS, IMAGE_SIZE, IMAGE_SIZE))
        ids.append(np.arange(first, first + count))
    id_array = np.concatenate(ids)
    absent = [int(i) for i in id_array if int(i) not in meta]
    if absent:
        raise DataError(f"{csv_path} lacks character ids {_ranges(absent)}")
    return (
        torch.cat(images).numpy(),
        id_array,
        [meta[int(i)][0] for i in id_array],
        [meta[int(i)][1] for i in id_array],
    )


def _safe_member(name: str, archive: Path) -> PurePosixPath:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or "\\" in name or ":" in name:
        raise DataError(
            f"{archive}: refusing the archive member {name!r} (path outside the archive)"
        )
    return p


def _read_zips(files: list[Path]) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    from PIL import Image  # matplotlib's dependency; only the archive form needs it

    found: dict[int, dict] = {}
    for path in files:
        _check_known(path)
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e:
            raise DataError(f"{path} is not a readable zip archive: {e}") from e
        with archive:
            for info in archive.infolist():
                p = _safe_member(info.filename, path)
                if info.is_dir() or p.suffix.lower() != ".png":
                    continue
                m = _PNG.match(p.name)
                if m is None or len(p.parts) < 3:
                    raise DataError(
                        f"{path}: unexpected member {info.filename!r} (the official layout is "
                        "<top>/<Alphabet>/characterNN/<id>_<drawer>.png)"
                    )
                char_id, drawer = int(m.group(1)), int(m.group(2))
                if not (1 <= char_id <= NUM_CHARACTERS and 1 <= drawer <= DRAWERS):
                    raise DataError(f"{path}: member {info.filename!r} is out of range")
                try:
                    data = archive.read(info)
                    img = Image.open(io.BytesIO(data)).convert("L")
                except Exception as e:  # noqa: BLE001  (a damaged member)
                    raise DataError(f"{path}: member {info.filename!r} is damaged: {e}") from e
                if img.size != (SOURCE_SIZE, SOURCE_SIZE):
                    raise DataError(
                        f"{path}: {info.filename!r} is {img.size[0]}x{img.size[1]}, "
                        f"expected {SOURCE_SIZE}x{SOURCE_SIZE}"
                    )
                entry = found.setdefault(
                    char_id, {"alphabet": p.parts[-3], "character": p.parts[-2], "drawers": {}}
                )
                entry["drawers"][drawer] = np.asarray(img) < 128  # ink
    if not found:
        raise DataError(f"no Omniglot images in {', '.join(str(f) for f in files)}")
    ids = sorted(found)
    incomplete = [i for i in ids if len(found[i]["drawers"]) != DRAWERS]
    if incomplete:
        raise DataError(
            f"characters {_ranges(incomplete)} have fewer than {DRAWERS} drawers in "
            f"{', '.join(f.name for f in files)}"
        )
    images = []
    for i in ids:
        ink = np.stack([found[i]["drawers"][d] for d in range(1, DRAWERS + 1)])
        images.append(_resize(torch.from_numpy(ink).float()))
    return (
        torch.stack(images).numpy(),
        np.asarray(ids),
        [found[i]["alphabet"] for i in ids],
        [found[i]["character"] for i in ids],
    )


def cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "mumo_fast")


def load_omniglot(data_dir: str | os.PathLike | None = None, cache: bool = True) -> Omniglot:
    """Every character in the folder, resized (see the module docstring); cached."""
    folder = resolve_data_dir(data_dir)
    form, files = _sources(folder)
    key = hashlib.sha256(
        repr(
            (CACHE_VERSION, RESAMPLING, IMAGE_SIZE)
            + tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)
        ).encode()
    ).hexdigest()[:16]
    cached = cache_dir() / f"omniglot{IMAGE_SIZE}_{form}_{key}.npz"
    if cache and cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as z:
                images, ids = z["images"], z["ids"]
                alphabets, characters = list(z["alphabets"]), list(z["characters"])
        except Exception:  # noqa: BLE001  (a damaged cache is rebuilt)
            cached.unlink(missing_ok=True)
            return load_omniglot(data_dir, cache)
    else:
        images, ids, alphabets, characters = (_read_npz if form == "npz" else _read_zips)(files)
        if cache:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp.npz")
            np.savez(
                tmp, images=images, ids=ids, alphabets=np.asarray(alphabets),
                characters=np.asarray(characters),
            )  # fmt: skip
            os.replace(tmp, cached)
    return Omniglot(
        torch.from_numpy(np.ascontiguousarray(images)),
        torch.from_numpy(np.asarray(ids, dtype=np.int64)),
        [str(a) for a in alphabets],
        [str(c) for c in characters],
        str(folder),
    )
