"""The TAESD-family loader: real TAEF2 weights reconstruct a photo, variants come from the weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import skimage.data
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from forwardguard.errors import ForwardguardError
from forwardguard.models.taesd import (
    TAESDDecoder,
    TAESDEncoder,
    load_state_dict_file,
    load_taesd,
    parse_taesd_spec,
    save_taesd,
)


def astronaut(size: int) -> torch.Tensor:
    """skimage's astronaut photo as a (1, 3, size, size) float tensor in [0, 1]."""
    image = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1)[None].float() / 255
    return torch.nn.functional.interpolate(image, size=(size, size), mode="area")


def psnr(reference: torch.Tensor, other: torch.Tensor) -> float:
    mse = ((reference - other.clamp(0, 1)) ** 2).mean()
    return float(10 * torch.log10(1 / mse))


def reconstruct(encoder: TAESDEncoder, decoder: TAESDDecoder, image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return decoder(encoder(image))


@pytest.fixture(scope="module")
def taef2_dir(shared_dir: Path) -> Path:
    return shared_dir / "models" / "taef2"


@pytest.fixture(scope="module")
def taef2(taef2_dir: Path) -> tuple[TAESDEncoder, TAESDDecoder]:
    encoder, decoder = load_taesd(f"taesd:{taef2_dir / 'taef2_encoder.pth'}:{taef2_dir / 'taef2_decoder.pth'}")
    assert decoder is not None
    return encoder, decoder


@pytest.fixture(scope="module")
def v2_spec(shared_dir: Path, taef2_dir: Path) -> str:
    encoder = shared_dir / "models" / "taef2-v2" / "encoder.safetensors"
    return f"taesd:{encoder}:{taef2_dir / 'taef2_decoder.pth'}"


def test_taef2_reconstructs_astronaut_at_512(taef2):
    encoder, decoder = taef2
    image = astronaut(512)
    with torch.no_grad():
        latent = encoder(image)
    assert latent.shape == (1, 32, 64, 64)
    assert psnr(image, decoder(latent).detach()) > 29  # MODEL.md: about 31 dB (31.2 measured)


def test_taef2_reconstructs_astronaut_at_256(taef2):
    image = astronaut(256)
    assert psnr(image, reconstruct(*taef2, image)) > 27  # 28.7 dB measured


def test_variant_is_read_from_the_weights(taef2, taef2_dir):
    encoder, decoder = taef2
    assert encoder.latent_channels == decoder.latent_channels == 32
    assert encoder.pool_blocks == {11, 12, 13}
    assert decoder.pool_blocks == {3, 4, 5}
    # The classes rebuilt from the variant have exactly the files' keys and shapes.
    rebuilt = {
        "taef2_encoder.pth": TAESDEncoder(32, {11, 12, 13}),
        "taef2_decoder.pth": TAESDDecoder(32, {3, 4, 5}),
    }
    for name, module in rebuilt.items():
        file_shapes = {key: value.shape for key, value in load_state_dict_file(taef2_dir / name).items()}
        assert {key: value.shape for key, value in module.state_dict().items()} == file_shapes


def test_loaded_modules_are_frozen_float32_eval(taef2):
    for module in taef2:
        assert not module.training
        assert all(p.dtype == torch.float32 and not p.requires_grad for p in module.parameters())


def test_decoder_clamps_the_latent_first(taef2):
    _, decoder = taef2
    latent = torch.randn(1, 32, 4, 4) * 100
    after_clamp = decoder[1:]
    assert list(after_clamp.state_dict()) == list(decoder.state_dict())  # slices keep the keys
    with torch.no_grad():
        assert torch.equal(decoder(latent), after_clamp(torch.tanh(latent / 3) * 3))
        assert not torch.equal(decoder(latent), after_clamp(latent))


@pytest.mark.parametrize("latent_channels", [4, 16])
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_synthetic_variants_round_trip(tmp_path, latent_channels, suffix):
    torch.manual_seed(latent_channels)
    encoder, decoder = TAESDEncoder(latent_channels), TAESDDecoder(latent_channels)
    paths = [tmp_path / f"encoder{suffix}", tmp_path / f"decoder{suffix}"]
    for module, path in zip((encoder, decoder), paths):
        if suffix == ".pth":
            torch.save(module.state_dict(), path)
        else:
            save_file(module.state_dict(), path)
    loaded_encoder, loaded_decoder = load_taesd(f"taesd:{paths[0]}:{paths[1]}")
    assert loaded_decoder is not None
    assert loaded_encoder.latent_channels == loaded_decoder.latent_channels == latent_channels
    assert loaded_encoder.pool_blocks == loaded_decoder.pool_blocks == frozenset()
    assert not any(".pool." in key for key in loaded_encoder.state_dict())
    image = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        latent = loaded_encoder(image)
        assert latent.shape == (1, latent_channels, 4, 4)
        assert torch.equal(latent, encoder(image))
        assert torch.equal(loaded_decoder(latent), decoder(latent))


def test_taef2_v2_with_taef2_decoder(v2_spec, tmp_path, monkeypatch):
    encoder, decoder = load_taesd(v2_spec)
    assert decoder is not None
    image = astronaut(256)
    reconstruction = reconstruct(encoder, decoder, image)
    assert psnr(image, reconstruction) > 26  # 27.2 dB measured

    save_taesd(encoder, decoder, tmp_path / "saved")
    monkeypatch.chdir(tmp_path)
    expected = (Path("saved/encoder.safetensors"), Path("saved/decoder.safetensors"))
    assert parse_taesd_spec("taesd:saved") == expected
    again_encoder, again_decoder = load_taesd("taesd:saved")
    assert again_decoder is not None
    assert again_encoder.pool_blocks == {11, 12, 13} and again_decoder.pool_blocks == {3, 4, 5}
    assert torch.equal(reconstruct(again_encoder, again_decoder, image), reconstruction)


def test_save_keeps_keys_and_casts_to_the_given_dtype(taef2, taef2_dir, tmp_path):
    encoder, _ = taef2
    save_taesd(encoder, None, tmp_path, dtype=torch.float16)
    assert not (tmp_path / "decoder.safetensors").exists()
    with safe_open(tmp_path / "encoder.safetensors", framework="pt") as handle:
        assert set(handle.keys()) == set(load_state_dict_file(taef2_dir / "taef2_encoder.pth"))
        assert {handle.get_tensor(key).dtype for key in handle.keys()} == {torch.float16}
    # The originals are float16 too, so a float16 copy of them loads back bit for bit.
    loaded, decoder = load_taesd(f"taesd:{tmp_path}")
    assert decoder is None
    for key, value in loaded.state_dict().items():
        assert value.dtype == torch.float32
        assert torch.equal(value, encoder.state_dict()[key])


def test_folder_with_pth_files(taef2_dir):
    encoder, decoder = parse_taesd_spec(f"taesd:{taef2_dir}")
    assert (encoder.name, decoder.name if decoder else None) == ("taef2_encoder.pth", "taef2_decoder.pth")


def test_folder_with_ambiguous_or_missing_encoder(tmp_path):
    torch.save(TAESDEncoder().state_dict(), tmp_path / "a_encoder.pth")
    torch.save(TAESDEncoder().state_dict(), tmp_path / "b_encoder.pth")
    with pytest.raises(ForwardguardError, match="several encoder files"):
        parse_taesd_spec(f"taesd:{tmp_path}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ForwardguardError, match=f"taesd:{empty}.*no encoder"):
        parse_taesd_spec(f"taesd:{empty}")


@pytest.mark.parametrize("spec", ["taesd:", "taesd:a.pth:b.pth:c.pth", "taesd:a.pth:", "sd:a.pth"])
def test_malformed_specs(spec):
    with pytest.raises(ForwardguardError, match="spec") as caught:
        parse_taesd_spec(spec)
    assert repr(spec) in str(caught.value)


def test_missing_file(tmp_path):
    missing = tmp_path / "nothere.safetensors"
    with pytest.raises(ForwardguardError, match="not found") as caught:
        load_taesd(f"taesd:{missing}")
    assert str(missing) in str(caught.value)
    with pytest.raises(ForwardguardError, match="not found") as caught:
        load_state_dict_file(missing)
    assert str(missing) in str(caught.value)


def test_wrong_extension(tmp_path):
    path = tmp_path / "encoder.bin"
    torch.save(TAESDEncoder().state_dict(), path)
    with pytest.raises(ForwardguardError, match="unknown weight file type") as caught:
        load_taesd(f"taesd:{path}")
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_random_bytes(tmp_path, suffix):
    path = tmp_path / f"encoder{suffix}"
    noise = torch.randint(0, 256, (4096,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    path.write_bytes(noise.numpy().tobytes())
    with pytest.raises(ForwardguardError, match="cannot read weight file") as caught:
        load_taesd(f"taesd:{path}")
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_unrelated_state_dict(tmp_path):
    path = tmp_path / "encoder.safetensors"
    save_file({"linear.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ForwardguardError, match="not a TAESD encoder") as caught:
        load_taesd(f"taesd:{path}")
    assert str(path) in str(caught.value)


def test_encoder_with_extra_or_missing_keys_is_refused(tmp_path):
    state = TAESDEncoder().state_dict()
    state["1.conv.6.weight"] = torch.zeros(1)
    del state["0.bias"]
    path = tmp_path / "encoder.safetensors"
    save_file(state, path)
    with pytest.raises(ForwardguardError, match="not a TAESD encoder.*0.bias") as caught:
        load_taesd(f"taesd:{path}")
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_encoder_file_given_as_decoder(taef2_dir):
    encoder_file = taef2_dir / "taef2_encoder.pth"
    with pytest.raises(ForwardguardError, match="not a TAESD decoder") as caught:
        load_taesd(f"taesd:{encoder_file}:{encoder_file}")
    assert str(encoder_file) in str(caught.value)


def test_latent_channel_mismatch(tmp_path, taef2_dir):
    save_taesd(TAESDEncoder(4), None, tmp_path)
    with pytest.raises(ForwardguardError, match="4 latent channels.*expects 32"):
        load_taesd(f"taesd:{tmp_path / 'encoder.safetensors'}:{taef2_dir / 'taef2_decoder.pth'}")


class _OpensAFile:
    """Unpickling this creates a file: a stand-in for code a malicious .pth would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_with_arbitrary_object_is_refused(tmp_path):
    marker = tmp_path / "was_unpickled"
    path = tmp_path / "encoder.pth"
    torch.save({"0.weight": _OpensAFile(marker)}, path)
    with pytest.raises(ForwardguardError, match="cannot read weight file") as caught:
        load_state_dict_file(path)
    assert str(path) in str(caught.value)
    assert not marker.exists()
    # Control: a full unpickle of the same file does run the payload.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_pickle_without_a_state_dict_is_refused(tmp_path):
    path = tmp_path / "encoder.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ForwardguardError, match="does not hold a state dict") as caught:
        load_taesd(f"taesd:{path}")
    assert str(path) in str(caught.value)
