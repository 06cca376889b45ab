"""The API over HTTP against a real server: immunize, lookup, patterns, models, health, metrics,
tenant isolation, every authentication failure, and the committed OpenAPI document."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from serve_support import (
    REPO_ROOT,
    client,
    decode_png,
    immunize,
    metric,
    new_key,
    pattern_count,
    png_bytes,
    random_image,
)

from forwardguard.registry import Registry
from forwardguard.registry.keys import list_keys, revoke_key


def test_immunize_returns_the_recorded_png(server: str, served_registry: Path, photo) -> None:
    clean = photo("astronaut", (80, 64))
    with client(server, new_key(served_registry, "acme")) as http:
        response = immunize(http, clean, name="astronaut.png", eps="8/255", steps=3)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png"
        pattern_id = response.headers["x-pattern-id"]
        assert response.headers["location"] == f"/v1/patterns/{pattern_id}"
        immunized = decode_png(response.content)
        assert immunized.shape == clean.shape
        assert 0 < np.abs(immunized.astype(int) - clean).max() <= 8

        with Registry.open(served_registry) as registry:
            record = registry.get_pattern(pattern_id)
            assert registry.load_sample(record).clean.tobytes() == clean.tobytes()
        assert record.tenant == "acme"
        assert record.method == "encoder" and record.target == "gray"
        assert record.image_sha256 == hashlib.sha256(response.content).hexdigest()
        assert record.model_fingerprint == response.headers["x-model-fingerprint"]
        assert record.params["eps_255"] == pytest.approx(8) and record.params["steps"] == 3
        assert record.params["source"] == "astronaut.png" and record.params["seed"] == 0

        shown = http.get(f"/v1/patterns/{pattern_id}")
        assert shown.status_code == 200
        assert shown.json()["id"] == pattern_id and shown.json()["tenant"] == "acme"
        assert shown.json()["params"] == record.params
        listed = http.get("/v1/patterns").json()["patterns"]
        assert [pattern["id"] for pattern in listed] == [pattern_id]


def test_noise_and_diffusion_methods_and_model_choice(server: str, served_registry: Path, photo) -> None:
    with client(server, new_key(served_registry, "methods")) as http:
        models = http.get("/v1/models").json()["models"]
        assert [model["methods"] for model in models] == [["encoder", "noise"], ["encoder", "noise", "diffusion"]]
        taef2, tiny = models

        untyped = {"image": ("coffee", png_bytes(photo("coffee", (48, 48))), "application/octet-stream")}
        noise = http.post("/v1/immunize", files=untyped, data={"method": "noise", "seed": "5"})
        assert noise.status_code == 200, noise.text
        assert noise.headers["x-model-fingerprint"] == taef2["fingerprint"]

        refused = immunize(http, photo("coffee", (48, 48)), method="diffusion", steps=1)
        assert refused.status_code == 422
        assert "needs a Stable Diffusion model" in refused.json()["detail"]

        clean = photo("chelsea", (32, 32))
        mask = np.zeros((32, 32, 3), dtype=np.uint8)
        mask[8:24, 8:24] = 255
        files = {
            "image": ("chelsea.png", png_bytes(clean), "image/png"),
            "mask": ("mask.png", png_bytes(mask), "image/png"),
        }
        data = {"method": "diffusion", "steps": "1", "model": tiny["fingerprint"][:12]}
        inpainted = http.post("/v1/immunize", files=files, data=data)
        assert inpainted.status_code == 200, inpainted.text
        assert inpainted.headers["x-model-fingerprint"] == tiny["fingerprint"]

        encoder_with_mask = http.post("/v1/immunize", files=files, data={"steps": "1"})
        assert encoder_with_mask.status_code == 422 and "mask" in encoder_with_mask.json()["detail"]
        unknown_model = immunize(http, clean, model="taesd:/nowhere")
        assert unknown_model.status_code == 422 and "not served here" in unknown_model.json()["detail"]

    with Registry.open(served_registry) as registry:
        records = {record.method: record for record in registry.list_patterns(tenant="methods")}
    assert sorted(records) == ["diffusion", "noise"]
    assert records["diffusion"].model_spec == "tiny" and records["diffusion"].params["mask"] == "mask.png"
    assert records["noise"].params["seed"] == 5


def test_robust_immunization_is_recorded_with_its_mix(server: str, served_registry: Path, photo) -> None:
    from forwardguard.immunize.robust import DEFAULT_MIX

    clean = photo("astronaut", (48, 40))
    with client(server, new_key(served_registry, "robust")) as http:
        plain = immunize(http, clean, steps=2)
        mixed = immunize(http, clean, steps=2, robust_mix=" jpeg_q75, resize_0.50,hflip", robust_draws=2)
        default = immunize(http, clean, steps=2, robust="true")
        responses = [plain, mixed, default]
        assert [response.status_code for response in responses] == [200] * 3, [r.text for r in responses]
        ids = [response.headers["x-pattern-id"] for response in responses]
        assert len(set(ids)) == 3, "the robust attacks must perturb the image differently from the plain one"
        shown = http.get(f"/v1/patterns/{ids[1]}").json()["params"]
        first = http.get("/v1/patterns", params={"limit": 2}).json()
        rest = http.get("/v1/patterns", params={"limit": 2, "after": first["next_after"]}).json()
        assert [p["id"] for p in first["patterns"] + rest["patterns"]] == ids, "keyset pages, oldest first"
        assert first["next_after"] == ids[1] and rest["next_after"] is None
        assert http.get("/v1/patterns", params={"after": "ab" * 32}).status_code == 404

    with Registry.open(served_registry) as registry:
        params = [registry.get_pattern(pattern_id).params for pattern_id in ids]
    assert "robust" not in params[0] and "robust_draws" not in params[0]
    assert params[1]["robust"] == ["jpeg_q75", "resize_0.5", "hflip"] and params[1]["robust_draws"] == 2
    assert params[2]["robust"] == list(DEFAULT_MIX) and params[2]["robust_draws"] == 1
    assert shown == params[1]


def test_bad_robust_settings_are_422_and_record_nothing(server: str, served_registry: Path) -> None:
    before = pattern_count(served_registry)
    with client(server, new_key(served_registry, "robust-bad")) as http:

        def refused(**fields: object) -> Any:
            """The 422's detail: a message from the handler, a list of errors from the form's validation."""
            response = immunize(http, random_image(seed=6, size=32), steps=1, **fields)
            assert response.status_code == 422, (fields, response.text)
            return response.json()["detail"]

        assert refused(robust_mix="jpeg_q75,sharpen").startswith("robust_mix: unknown transform 'sharpen'; known kinds:")
        assert refused(robust_mix="blur_4").startswith("robust_mix: transform blur: kernel size must be an odd integer")
        assert refused(robust_mix=" , ").startswith("robust_mix: the transform mix is empty")
        assert "not the noise baseline" in refused(method="noise", robust="true")
        assert "not the noise baseline" in refused(method="noise", robust_mix="hflip")
        for draws in (0, 9):
            assert refused(robust="true", robust_draws=draws)[0]["loc"] == ["body", "robust_draws"]
        assert refused(robust="sometimes")[0]["loc"] == ["body", "robust"]
    assert pattern_count(served_registry) == before


def test_lookup_finds_only_the_callers_patterns(server: str, served_registry: Path, photo) -> None:
    clean = photo("astronaut", (96, 96))
    with client(server, new_key(served_registry, "lookup-a")) as http:
        response = immunize(http, clean, steps=2)
        assert response.status_code == 200, response.text
        pattern_id = response.headers["x-pattern-id"]

        exact = http.post("/v1/lookup", files={"image": ("x.png", response.content, "image/png")}).json()
        assert exact["immunized"] is True
        assert exact["matches"][0] == exact["matches"][0] | {"id": pattern_id, "kind": "bytes", "distance": 0}
        again = immunize(http, clean, steps=3).headers["x-pattern-id"]  # the same picture: found only when asked
        asked = http.post("/v1/lookup", files={"image": ("x.png", response.content, "image/png")}, data={"perceptual": "true"})
        assert [(m["id"], m["kind"]) for m in asked.json()["matches"]] == [(pattern_id, "bytes"), (again, "perceptual")]
        assert len(http.post("/v1/lookup", files={"image": ("x.png", response.content, "image/png")}).json()["matches"]) == 1

        jpeg = io.BytesIO()
        Image.fromarray(decode_png(response.content)).save(jpeg, format="JPEG", quality=75)
        close = http.post("/v1/lookup", files={"image": ("x.jpg", jpeg.getvalue(), "image/jpeg")}).json()
        assert {(m["id"], m["kind"]) for m in close["matches"]} == {(pattern_id, "perceptual"), (again, "perceptual")}
        assert 0 <= close["matches"][0]["distance"] <= 10

        other_photo = photo("coffee", (96, 96))
        unrelated = http.post("/v1/lookup", files={"image": ("c.png", png_bytes(other_photo), "image/png")})
        assert unrelated.json() == {"immunized": False, "matches": []}

    with client(server, new_key(served_registry, "lookup-b")) as other_tenant:
        found = other_tenant.post("/v1/lookup", files={"image": ("x.png", response.content, "image/png")})
        assert found.json() == {"immunized": False, "matches": []}


def test_lookup_reads_a_rotated_jpeg_upright(server: str, served_registry: Path, rotated_jpeg, record_upright) -> None:
    jpeg, upright = rotated_jpeg
    key = new_key(served_registry, "lookup-exif")
    with Registry.open(served_registry) as registry:  # the upright pixels, recorded as they are (delta 0)
        record = record_upright(registry, upright, "lookup-exif")
    with client(server, key) as http:
        found = http.post("/v1/lookup", files={"image": ("sideways.jpg", jpeg, "image/jpeg")})
    assert found.status_code == 200, found.text
    assert [(match["id"], match["kind"]) for match in found.json()["matches"]] == [(record.id, "pixels")]


def test_a_tenant_sees_only_its_own_patterns(server: str, served_registry: Path) -> None:
    image = random_image(seed=11)
    with client(server, new_key(served_registry, "owner")) as owner:
        response = immunize(owner, image, method="noise")
        assert response.status_code == 200
        pattern_id = response.headers["x-pattern-id"]
        assert owner.get(f"/v1/patterns/{pattern_id}").status_code == 200

    with client(server, new_key(served_registry, "intruder")) as intruder:
        hidden = intruder.get(f"/v1/patterns/{pattern_id}")
        missing = intruder.get(f"/v1/patterns/{'0' * 64}")
        assert hidden.status_code == missing.status_code == 404
        assert intruder.get("/v1/patterns").json() == {"patterns": [], "next_after": None}
        assert intruder.get("/v1/patterns", params={"after": pattern_id}).status_code == 404, "nor does its cursor"
        before = pattern_count(served_registry)
        # The same image, method and seed: the same picture, recorded as the intruder's own pattern.
        duplicate = immunize(intruder, image, method="noise")
        assert duplicate.status_code == 200, duplicate.text
        assert duplicate.headers["x-pattern-id"] != pattern_id
        assert pattern_count(served_registry) == before + 1


def test_every_authentication_failure_is_401_and_records_nothing(server: str, served_registry: Path) -> None:
    revoked = new_key(served_registry, "revoked")
    with Registry.open(served_registry) as registry:
        (record,) = list_keys(registry, tenant="revoked")
        revoke_key(registry, tenant="revoked", key_id=record.id)
    valid = new_key(served_registry, "valid")
    headers = {
        "no key": {},
        "not bearer": {"Authorization": f"Basic {valid}"},
        "bare scheme": {"Authorization": "Bearer"},
        "wrong key": {"Authorization": f"Bearer {valid[:-2]}xx"},
        "revoked key": {"Authorization": f"Bearer {revoked}"},
    }
    before = pattern_count(served_registry)
    with client(server) as http:
        for case, header in headers.items():
            files = {"image": ("x.png", png_bytes(random_image(seed=3)), "image/png")}
            for response in (
                http.post("/v1/immunize", files=files, data={"steps": "1"}, headers=header),
                http.post("/v1/lookup", files=files, headers=header),
                http.get("/v1/patterns", headers=header),
                http.get("/v1/models", headers=header),
            ):
                assert response.status_code == 401, (case, response.request.url, response.text)
                assert response.headers["www-authenticate"] == "Bearer"
        assert http.get("/v1/models", headers={"Authorization": f"Bearer {valid}"}).status_code == 200
    assert pattern_count(served_registry) == before


def test_limits_and_bad_requests_record_nothing(server: str, served_registry: Path) -> None:
    image = png_bytes(random_image(seed=4))
    before = pattern_count(served_registry)
    with client(server, new_key(served_registry, "limits")) as http:

        def post(files: dict, data: dict | None = None) -> tuple[int, str]:
            response = http.post("/v1/immunize", files=files, data=data or {"steps": "1"})
            return response.status_code, response.json()["detail"]

        too_large = np.random.default_rng(0).integers(0, 256, 1_200_000, dtype=np.uint8).tobytes()
        assert post({"image": ("big.png", too_large, "image/png")})[0] == 413
        chunked = http.post(
            "/v1/immunize",
            content=(too_large[i : i + 65536] for i in range(0, len(too_large), 65536)),
            headers={"Content-Type": "multipart/form-data; boundary=x"},
        )
        assert chunked.status_code == 413
        many_pixels = png_bytes(np.zeros((600, 600, 3), dtype=np.uint8))  # 360,000 pixels, a few KB
        assert post({"image": ("wide.png", many_pixels, "image/png")}) == (
            413,
            "image: 600 x 600 = 360000 pixels is over the limit of 300000",
        )

        gif = io.BytesIO()
        Image.fromarray(random_image(seed=5)).save(gif, format="GIF")
        assert post({"image": ("a.gif", gif.getvalue(), "image/gif")})[0] == 415
        assert post({"image": ("a.png", gif.getvalue(), "image/png")}) == (415, "image: not a PNG, JPEG or WebP image")
        as_json = http.post("/v1/immunize", json={"image": "x"})
        assert as_json.status_code == 415 and "multipart/form-data" in as_json.json()["detail"]

        assert post({"image": ("cut.png", image[: len(image) // 2], "image/png")})[0] == 400
        files = {"image": ("x.png", image, "image/png")}
        assert post(files, {"eps": "40/255"})[0] == 422
        assert post(files, {"eps": "a lot"})[0] == 422
        assert post(files, {"steps": "21"}) == (422, "steps must be at most 20, got 21")
        assert post(files, {"method": "gradient"})[0] == 422
        assert post(files, {"target": "white"})[0] == 422
    assert pattern_count(served_registry) == before


def test_health_and_metrics(server: str, served_registry: Path) -> None:
    with client(server) as http:
        health = http.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "registry": "ok", "workers": 1, "queue_depth": 0}
    recorded = metric(server, "forwardguard_patterns_recorded_total", method="noise")
    with client(server, new_key(served_registry, "metrics")) as http:
        assert immunize(http, random_image(seed=21), method="noise").status_code == 200
        assert http.get("/v1/patterns/" + "f" * 64).status_code == 404
    assert metric(server, "forwardguard_patterns_recorded_total", method="noise") == recorded + 1
    assert metric(server, "forwardguard_http_requests_total", route="/v1/immunize", status="200") >= 1
    assert metric(server, "forwardguard_http_requests_total", route="/v1/patterns/{pattern_id}", status="404") >= 1
    assert metric(server, "forwardguard_http_request_duration_seconds_count", route="/v1/immunize") >= 1
    assert metric(server, "forwardguard_batch_size_count") >= 1
    text = client(server).get("/metrics").text
    for name in ("forwardguard_queue_depth 0.0", "forwardguard_immunizations_running 0.0"):
        assert name in text.splitlines()


def test_served_openapi_document_is_the_committed_one(server: str) -> None:
    from forwardguard.serve.openapi import render

    committed = (REPO_ROOT / "docs" / "openapi.json").read_text()
    assert render() == committed, "regenerate it: python -m forwardguard.serve.openapi > docs/openapi.json"
    with client(server) as http:
        assert http.get("/openapi.json").json() == json.loads(committed)
