"""The HTTP immunization API (FastAPI on uvicorn): ``create_app(settings)`` and ``run(settings)``.

The names are imported when first used, so that ``forwardguard.serve.settings`` (pydantic only: the
CLI makes ``serve``'s options from it) loads without FastAPI, torch and SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from forwardguard.serve.app import create_app
    from forwardguard.serve.server import build_server, run
    from forwardguard.serve.settings import ServeSettings, load_settings

_MODULES = {
    "ServeSettings": "settings",
    "build_server": "server",
    "create_app": "app",
    "load_settings": "settings",
    "run": "server",
}
"""Where each public name lives."""

__all__ = ["ServeSettings", "build_server", "create_app", "load_settings", "run"]


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)
