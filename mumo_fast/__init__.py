"""mumo_fast: fast multimodal model-agnostic meta-learning (MuMoMAML) for PyTorch."""

__version__ = "0.1.0"

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
