"""The OpenAPI document, as committed in docs/openapi.json.

Regenerate it with ``python -m forwardguard.serve.openapi > docs/openapi.json``; a test checks that
the served document equals the committed one.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from forwardguard.serve.app import create_app
from forwardguard.serve.settings import ServeSettings


def openapi_document() -> dict[str, Any]:
    """The document of any deployment: no setting appears in it, so placeholders do."""
    return create_app(ServeSettings(registry="unused", models=["unused"])).openapi()


def render() -> str:
    return json.dumps(openapi_document(), indent=2) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
