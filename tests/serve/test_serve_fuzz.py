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

from forwardguard.registry import Registry

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


@schemathesis.check
def patterns_are_the_callers(ctx, response, case) -> None:
    """A pattern read back, by a link from immunize, lookup or a listing or by a guessed id, is the caller's own."""
    if case.operation.label == "GET /v1/patterns/{pattern_id}" and response.status_code == 200:
        assert response.json()["tenant"] == "fuzz-stateful", response.json()["tenant"]


def test_linked_operations_stay_consistent(served_schema, served_registry: Path) -> None:
    """Stateful (issue 14): schemathesis follows the document's links, from POST /v1/immunize (its
    X-Pattern-Id), POST /v1/lookup and GET /v1/patterns to GET /v1/patterns/{id}, in random sequences
    with another tenant's patterns in the registry: no server error, and only the caller's patterns."""
    with Registry.open(served_registry) as registry:
        image = random_png_pattern()
        registry.record_pattern(**image, tenant="fuzz-other")
    headers = {"Authorization": f"Bearer {new_key(served_registry, 'fuzz-stateful')}"}
    machine = served_schema.as_state_machine()

    class LinkedCalls(machine):
        def get_call_kwargs(self, case) -> dict:
            _with_real_images(case)
            return {"headers": headers, "timeout": 120}

        def validate_response(self, response, case, additional_checks=None, **kwargs) -> None:
            case.validate_response(response, checks=[not_a_server_error, patterns_are_the_callers])

    LinkedCalls.run(
        settings=settings(
            max_examples=15, stateful_step_count=4, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
    )


def random_png_pattern() -> dict:
    """Another tenant's pattern: the same picture the fuzzer uploads, so that lookups find it if they leak."""
    rgb = random_image(seed=0, size=16)
    immunized = rgb.copy()
    immunized[0, 0] = rgb[0, 0] ^ 1
    delta = immunized.astype("int16") - rgb
    return {
        "image_png": png_bytes(immunized),
        "delta": delta,
        "method": "noise",
        "params": {"eps": 16 / 255, "seed": 0},
        "target": "gray",
        "model_fingerprint": "ab" * 32,
        "model_spec": "tiny",
    }
