"""schemathesis fuzzes every operation of the served OpenAPI document, valid and invalid inputs,
with a valid key: no input makes a server error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from serve_support import REPO_ROOT, new_key, png_bytes, random_image

# The committed document names the operations (a test checks that the served one equals it).
OPERATIONS = [
    (method.upper(), path)
    for path, methods in json.loads((REPO_ROOT / "docs" / "openapi.json").read_text())["paths"].items()
    for method in methods
]

# Random bytes never get past the image checks: a third of the cases upload a real image instead.
REAL_IMAGE = png_bytes(random_image(seed=0, size=16))


def _with_real_images(case):
    if isinstance(case.body, dict):
        for field in ("image", "mask"):
            if field in case.body:
                case.body[field] = REAL_IMAGE
    return case


@pytest.fixture(scope="module")
def served_schema(server: str):
    return schemathesis.openapi.from_url(f"{server}/openapi.json")


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_no_input_makes_a_server_error(served_schema, served_registry: Path, method: str, path: str) -> None:
    operation = served_schema[path][method]
    headers = {"Authorization": f"Bearer {new_key(served_registry, 'fuzz')}"}
    valid = operation.as_strategy(GenerationMode.POSITIVE)
    cases = st.one_of(valid.map(_with_real_images), valid, operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=cases)
    @settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def fuzz(case) -> None:
        response = case.call(headers=headers, timeout=120)
        case.validate_response(response, checks=[not_a_server_error])

    fuzz()
