"""The offline demo: the whole flow on bundled photographs and a model that needs no download."""

from __future__ import annotations

from pathlib import Path

PHOTOS = Path(__file__).parent / "photos"


def demo_photos() -> list[Path]:
    """The bundled photographs (see photos/LICENSE.md)."""
    return sorted(PHOTOS.glob("*.png"))
