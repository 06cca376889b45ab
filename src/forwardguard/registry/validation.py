"""Checks on what a caller hands the registry, each failing with a one-line ForwardguardError."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

from forwardguard.errors import ForwardguardError

STATUSES = ("active", "retired")
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_METHOD = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
_SNAPSHOT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}")
_ID_PREFIX = re.compile(r"[0-9a-f]{6,64}")


def check_delta(delta: Any, rgb: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """The delta as int16, after checking that it is ``immunized - clean`` for this image and
    within the ``eps`` budget of ``params`` (when it names one)."""
    array = np.asarray(delta)
    if array.dtype.kind not in "iu":
        raise ForwardguardError(f"the delta must be an integer array (immunized - clean, uint8 steps), not {array.dtype}")
    if array.shape != rgb.shape:
        raise ForwardguardError(f"the delta's shape {array.shape} doesn't match the image's {rgb.shape}")
    low, high = int(array.min()), int(array.max())
    if low < -255 or high > 255:
        raise ForwardguardError(f"the delta's values {low}..{high} leave -255..255")
    delta16 = array.astype(np.int16)
    clean = rgb.astype(np.int16) - delta16
    if int(clean.min()) < 0 or int(clean.max()) > 255:
        raise ForwardguardError("the immunized image minus the delta leaves 0..255: the delta is not immunized - clean")
    eps = params.get("eps")
    if isinstance(eps, (int, float)) and not isinstance(eps, bool):
        bound = math.floor(eps * 255 + 1e-6)
        if max(-low, high) > bound:
            raise ForwardguardError(f"the delta reaches {max(-low, high)}, beyond the budget eps*255 = {eps * 255:.2f}")
    return delta16


def check_params(params: Any) -> dict[str, Any]:
    """The attack parameters as they will read back: a JSON object."""
    if not isinstance(params, dict):
        raise ForwardguardError(f"params must be a dict, not {type(params).__name__}")
    try:
        return json.loads(json.dumps(params, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ForwardguardError(f"params must be JSON-serialisable: {error}") from None


def check_fingerprint(value: Any, what: str = "model_fingerprint") -> str:
    if not isinstance(value, str) or not _FINGERPRINT.fullmatch(value):
        raise ForwardguardError(f"{what} must be a sha256 hex digest (64 lowercase hex characters), got {value!r}")
    return value


def check_method(value: Any) -> str:
    if not isinstance(value, str) or not _METHOD.fullmatch(value):
        raise ForwardguardError(f"method must be a short lowercase name such as 'encoder', got {value!r}")
    return value


DEFAULT_TENANT = "default"
"""The tenant of patterns recorded without one (the CLI's)."""


def check_tenant(value: Any) -> str:
    if not isinstance(value, str) or not _TENANT.fullmatch(value):
        raise ForwardguardError(f"tenant must be 1-128 letters, digits or . _ @ -, got {value!r}")
    return value


def check_snapshot_name(value: Any) -> str:
    if not isinstance(value, str) or not _SNAPSHOT.fullmatch(value):
        raise ForwardguardError(f"snapshot name must be 1-200 letters, digits or . _ : @ -, got {value!r}")
    return value


def check_text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ForwardguardError(f"{what} must be a non-empty string, got {value!r}")
    return value


def check_status(value: Any) -> str | None:
    if value is not None and value not in STATUSES:
        raise ForwardguardError(f"status must be one of {', '.join(STATUSES)}, got {value!r}")
    return value


def check_id_prefix(value: Any, what: str) -> str:
    """A full sha256 id or a prefix of at least 6 hex characters, lowercased."""
    text = value.strip().lower() if isinstance(value, str) else ""
    if not _ID_PREFIX.fullmatch(text):
        raise ForwardguardError(f"invalid {what} {value!r}: give its sha256 hex (or a unique prefix of 6+ characters)")
    return text
