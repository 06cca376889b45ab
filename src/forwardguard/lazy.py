"""Lazy package faces (PEP 562): a package names its public objects, and each is imported on first use.

``import forwardguard.finetune.config`` imports the package ``forwardguard.finetune`` first; with an
eager face that would load the trainer, torch and diffusers for a YAML check. A face made here costs
nothing until one of its names is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package``: ``exports`` maps each public name to the module that
    defines it; any other name is an AttributeError, as for a plain module."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return __getattr__
