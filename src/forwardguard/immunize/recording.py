"""Record an immunized image in the registry: the one way the CLI, the HTTP API, the benches and the
tests do it, so that a pattern's ``params`` say the same whoever recorded it."""

from __future__ import annotations

from typing import Any

from forwardguard.immunize.attack import AttackSettings, ImmunizedImage
from forwardguard.registry import DEFAULT_TENANT, PatternRecord, Registry

MAX_NAME_LENGTH = 256
"""The longest source or mask file name a pattern keeps (an upload's name comes from the client)."""


def pattern_params(settings: AttackSettings, result: ImmunizedImage, *, source: str | None, mask: str | None) -> dict[str, Any]:
    """A pattern's ``params``: every attack setting that shaped it (``settings.as_record()``, less the
    method, which the record keeps apart), the PGD steps it ran (``steps_run``), and the names of its
    source image and inpainting mask files (None when there is none)."""
    params = settings.as_record()
    del params["method"]
    params["steps_run"] = result.steps_run
    params["source"] = None if source is None else source[:MAX_NAME_LENGTH]
    params["mask"] = None if mask is None else mask[:MAX_NAME_LENGTH]
    return params


def record_immunized(
    registry: Registry,
    result: ImmunizedImage,
    *,
    png: bytes,
    settings: AttackSettings,
    model_fingerprint: str,
    model_spec: str,
    target: str = "gray",
    source: str | None = None,
    mask: str | None = None,
    tenant: str = DEFAULT_TENANT,
) -> PatternRecord:
    """Record ``result``, immunized with ``settings`` against the model ``model_fingerprint``, as a pattern.

    ``png`` is the immunized image exactly as it is handed out (``result``'s pixels, with the source's
    ICC profile); ``result.delta`` is ``immunized - clean``. ``source`` and ``mask`` name the input files.
    Recording the same image again for the same tenant returns the first record.
    """
    return registry.record_pattern(
        image_png=png,
        delta=result.delta,
        method=settings.method,
        params=pattern_params(settings, result, source=source, mask=mask),
        target=target,
        model_fingerprint=model_fingerprint,
        model_spec=model_spec,
        tenant=tenant,
    )
