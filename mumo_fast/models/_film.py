"""The ``film=`` argument shared by the base networks."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

FilmArg = Sequence[tuple[Tensor | None, Tensor | None]] | None


def check_film(film: FilmArg, channels: list[int]) -> list[tuple[Tensor | None, Tensor | None]]:
    """One (gamma, beta) pair per modulated layer; None means no modulation anywhere."""
    if film is None:
        return [(None, None)] * len(channels)
    if not isinstance(film, (list, tuple)) or len(film) != len(channels):
        raise ValueError(
            f"film must be None or a sequence of {len(channels)} (gamma, beta) pairs "
            f"(one per modulated layer), got {type(film).__name__} of length "
            f"{len(film) if isinstance(film, (list, tuple)) else '?'}"
        )
    out = []
    for i, pair in enumerate(film):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"film[{i}] must be a (gamma, beta) pair")
        out.append((pair[0], pair[1]))
    return out
