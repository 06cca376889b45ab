"""The HTTP immunization API (FastAPI on uvicorn): ``create_app(settings)`` and ``run(settings)``.

The names are imported when first used, so that ``forwardguard.serve.settings`` (pydantic only: the
CLI makes ``serve``'s options from it) loads without FastAPI, torch and SQLAlchemy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from forwardguard.lazy import lazy_exports

if TYPE_CHECKING:
    from forwardguard.serve.app import create_app
    from forwardguard.serve.server import build_server, run
    from forwardguard.serve.settings import ServeSettings, load_settings

__all__ = ["ServeSettings", "build_server", "create_app", "load_settings", "run"]
__getattr__ = lazy_exports(__name__, {
    "create_app": "forwardguard.serve.app",
    "build_server": "forwardguard.serve.server",
    "run": "forwardguard.serve.server",
    "ServeSettings": "forwardguard.serve.settings",
    "load_settings": "forwardguard.serve.settings",
})  # fmt: skip
