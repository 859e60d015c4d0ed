"""mumo_fast: fast multimodal model-agnostic meta-learning (MuMoMAML) for PyTorch."""

import os as _os

__version__ = "0.1.0"

# In a source checkout (editable install, or `python -c` / pytest from the repository
# root) the Triton kernels live in the top-level `kernels/` folder; make them importable
# as `mumo_fast.kernels`, as a regular install maps them (setup.py package_dir).
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "kernels", "__init__.py")) and not _os.path.isdir(
    _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "kernels")
):
    __path__.append(_root)  # noqa: F821  (package __path__)


# Subpackages reachable as attributes (`mumo_fast.ops.film_linear(...)` after `import
# mumo_fast`), imported on first access (PEP 562): `import mumo_fast` itself imports no torch.
_SUBMODULES = ("domains", "envs", "meta", "models", "nn", "ops", "runtime", "train")


def __getattr__(name):
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")  # also sets the attribute
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULES))


def load(path, device="cpu"):
    """Load a trained MetaLearner from a run folder or its model.pt, in eval mode.

    >>> model = mumo_fast.load("runs/film2")
    >>> preds = model.predict(support_x, support_y, query_x)
    """
    from .train.checkpoint import load_learner  # lazy: `import mumo_fast` stays light

    return load_learner(path, device)
