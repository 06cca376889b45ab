"""The HTTP immunization API (FastAPI on uvicorn): ``create_app(settings)`` and ``run(settings)``.

Importing this package imports FastAPI, torch and SQLAlchemy: the CLI imports it inside ``serve``.
"""

from forwardguard.serve.app import create_app
from forwardguard.serve.server import build_server, run
from forwardguard.serve.settings import ServeSettings, load_settings

__all__ = ["ServeSettings", "build_server", "create_app", "load_settings", "run"]
