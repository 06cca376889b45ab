"""The TAESANA encoder (32x, 32 latent channels, no decoder): read from the weights, padded to 32, saved and reloaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from forwardguard.errors import ForwardguardError
from forwardguard.models import load_model
from forwardguard.models.autoencoder import AutoencoderModel
from forwardguard.models.padding import encode
from forwardguard.models.taesd import (
    TAESANAEncoder,
    TAESDDecoder,
    TAESDEncoder,
    load_state_dict_file,
    load_taesd,
    parse_taesd_spec,
)


@pytest.fixture(scope="module")
def taesana_file(shared_dir: Path) -> Path:
    return shared_dir / "models" / "taesana" / "taesana_encoder.pth"


@pytest.fixture(scope="module")
def taesana(taesana_spec: str) -> AutoencoderModel:
    model = load_model(taesana_spec)
    assert isinstance(model, AutoencoderModel)
    return model


def astronaut(size: int) -> torch.Tensor:
    import skimage.data

    image = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1)[None].float() / 255
    return torch.nn.functional.interpolate(image, size=(size, size), mode="area")


def test_the_real_file_loads_as_the_32x_family(taesana, taesana_file):
    encoder = taesana.encoder
    assert isinstance(encoder, TAESANAEncoder)
    assert (encoder.downsampling, encoder.latent_channels, encoder.pool_blocks) == (32, 32, frozenset())
    assert taesana.encode_multiple == 32
    assert taesana.decoder is None and not taesana.has_decoder
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in encoder.parameters()) and not encoder.training
    file_shapes = {key: value.shape for key, value in load_state_dict_file(taesana_file).items()}
    assert {key: value.shape for key, value in TAESANAEncoder(32).state_dict().items()} == file_shapes


def test_a_512_photo_gives_a_32x16x16_latent(taesana):
    with torch.no_grad():
        latent = taesana.encode(astronaut(512))
    assert latent.shape == (1, 32, 16, 16)
    # MODEL.md: mean about 0.09, std about 0.95 on a photo (0.04 and 1.04 measured on this one)
    assert abs(float(latent.mean())) < 0.3 and 0.7 < float(latent.std()) < 1.3


def test_an_odd_sized_image_is_padded_to_32(taesana):
    seen = []
    hook = taesana.encoder.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    try:
        with torch.no_grad():
            latent = encode(taesana, torch.rand(1, 3, 100, 70, generator=torch.Generator().manual_seed(0)))
    finally:
        hook.remove()
    assert seen == [(1, 3, 128, 96)]
    assert latent.shape == (1, 32, 4, 3) and bool(torch.isfinite(latent).all())


def test_a_file_spec_and_a_folder_spec_load_the_same_model(taesana, taesana_file):
    assert parse_taesd_spec(f"taesd:{taesana_file.parent}") == (taesana_file, None)
    assert load_model(f"taesd:{taesana_file.parent}").fingerprint == taesana.fingerprint


def test_saving_writes_the_same_keys_and_reloads_the_same_family(taesana, taesana_file, tmp_path):
    spec = taesana.save(tmp_path / "saved")
    assert spec == f"taesd:{tmp_path / 'saved'}"
    assert sorted(path.name for path in (tmp_path / "saved").iterdir()) == ["encoder.safetensors"]
    with safe_open(tmp_path / "saved" / "encoder.safetensors", framework="pt") as handle:
        assert set(handle.keys()) == set(load_state_dict_file(taesana_file))
    again = load_model(spec)
    assert isinstance(again, AutoencoderModel) and isinstance(again.encoder, TAESANAEncoder)
    assert again.encode_multiple == 32 and again.fingerprint == taesana.fingerprint
    image = astronaut(64)
    with torch.no_grad():
        assert torch.equal(again.encode(image), taesana.encode(image))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_tiny_random_taesana_round_trips_with_its_variant(tmp_path, suffix):
    torch.manual_seed(0)
    encoder = TAESANAEncoder(latent_channels=4)
    path = tmp_path / f"encoder{suffix}"
    if suffix == ".pth":
        torch.save({key: value.half() for key, value in encoder.state_dict().items()}, path)
    else:
        save_file(encoder.state_dict(), path)
    loaded, decoder = load_taesd(f"taesd:{path}")
    assert decoder is None
    assert isinstance(loaded, TAESANAEncoder) and loaded.latent_channels == 4
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        latent = loaded(image)
        assert latent.shape == (1, 4, 2, 2)
        expected = encoder.half().float()(image) if suffix == ".pth" else encoder(image)
        assert torch.allclose(latent, expected, atol=1e-5)


def test_the_family_comes_from_the_weights_not_the_file_name(tmp_path):
    """A TAESANA encoder saved under a TAESD-like name is TAESANA, and the reverse."""
    save_file(TAESANAEncoder(4).state_dict(), tmp_path / "taesd_encoder.safetensors")
    save_file(TAESDEncoder(4).state_dict(), tmp_path / "taesana_encoder.safetensors")
    assert isinstance(load_taesd(f"taesd:{tmp_path / 'taesd_encoder.safetensors'}")[0], TAESANAEncoder)
    assert isinstance(load_taesd(f"taesd:{tmp_path / 'taesana_encoder.safetensors'}")[0], TAESDEncoder)


def test_an_8x_decoder_is_refused_with_a_32x_encoder(tmp_path):
    save_file(TAESANAEncoder(32).state_dict(), tmp_path / "encoder.safetensors")
    save_file(TAESDDecoder(32).state_dict(), tmp_path / "decoder.safetensors")
    with pytest.raises(ForwardguardError, match="encoder downsamples 32x but decoder upsamples 8x") as caught:
        load_taesd(f"taesd:{tmp_path}")
    assert "\n" not in str(caught.value)


def test_an_unknown_first_conv_is_refused(tmp_path):
    state = TAESANAEncoder(4).state_dict()
    state["0.weight"] = torch.zeros(16, 3, 3, 3)
    path = tmp_path / "encoder.safetensors"
    save_file(state, path)
    with pytest.raises(ForwardguardError, match="not a TAESD encoder: its first conv has 16 output channels") as caught:
        load_taesd(f"taesd:{path}")
    assert str(path) in str(caught.value) and "TAESANAEncoder" in str(caught.value)
