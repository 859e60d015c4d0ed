"""Task domains. Each is a subpackage whose `run` module offers the CLI commands:

``add_train_arguments(parser)``, ``train(args) -> int``, ``evaluate(args) -> int`` and
``plot(args) -> int``, with run folders holding a ``run.json`` that names the domain.
"""

from __future__ import annotations

import importlib
from types import ModuleType

DOMAINS = ("regression", "omniglot", "navigation")


def get_domain(name: str) -> ModuleType:
    """The `run` module of a domain (imported on first use)."""
    if name not in DOMAINS:
        raise ValueError(f"unknown domain {name!r}; available: {', '.join(DOMAINS)}")
    return importlib.import_module(f"{__name__}.{name}.run")


class UsageError(Exception):
    """A bad command line or run folder: the CLI prints it as one line and exits with status 2."""
