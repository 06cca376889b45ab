"""A server of an encoder-only model (TAESANA: 32x, no decoder): the encoder attack works, the diffusion attack is a 422."""

from __future__ import annotations

from pathlib import Path

from serve_support import client, decode_png, immunize, make_registry, new_key, running_server

from forwardguard.serve import ServeSettings


def test_an_encoder_only_model_is_served_and_refuses_the_diffusion_attack(tmp_path: Path, taesana_spec: str, photo) -> None:
    registry = make_registry(tmp_path)
    settings = ServeSettings(registry=str(registry), models=[taesana_spec], device="cpu", max_steps=5, default_steps=2)
    with running_server(settings) as url, client(url, new_key(registry, "acme")) as http:
        (served,) = http.get("/v1/models").json()["models"]
        assert served["spec"] == taesana_spec and served["methods"] == ["encoder", "noise"]

        image = photo("coffee", (50, 40))  # padded to 64 x 64 for the 32x encoder
        answer = immunize(http, image)
        assert answer.status_code == 200, answer.text
        assert decode_png(answer.content).shape == (40, 50, 3)
        assert answer.headers["x-model-fingerprint"] == served["fingerprint"]

        refused = immunize(http, image, method="diffusion")
        assert refused.status_code == 422
        assert refused.json()["detail"] == (
            f"method diffusion needs a Stable Diffusion model; {taesana_spec} is not one (its methods: encoder, noise)"
        )
        assert http.get("/healthz").status_code == 200
