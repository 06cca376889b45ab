"""TAESD-family tiny autoencoders (TAESD, TAESDXL, TAESD3, TAEF1, TAEF2) and the TAESANA encoder, from weight files.

The architectures are described in ``shared/models/taef2/MODEL.md`` and ``shared/models/taesana/MODEL.md``.
Every half is a flat ``nn.Sequential`` module whose state-dict keys (``<index>.<...>``) are exactly those
of the published weight files, so a file loads with ``load_state_dict(strict=True)`` and a module saves
back to the same keys. The variant is read from the weights, never from a file name: the encoder's
family from its first conv (64 output channels: the 8x TAESD encoders; 32: TAESANA, 32x), the latent
channels from the shape of the encoder's last conv (or the decoder's first), and which Blocks carry a
``pool`` branch (TAEF2) from the keys that contain ``.pool.``.

Conventions: images are NCHW float in [0, 1] (not [-1, 1] like the Stable Diffusion VAE); an encoder
downsamples by its ``downsampling`` (8, or 32 for TAESANA) and returns the latent without any scaling
factor; the decoder (8x; none is available for TAESANA) first squashes the latent with
``tanh(z / 3) * 3`` and returns an image that is only roughly in [0, 1]: it does not clamp its output,
so callers clamp when they need valid pixels. Height and width should be multiples of the
downsampling for a reconstruction to have the input's size.

A model spec names the files: ``taesd:ENCODER[:DECODER]`` or ``taesd:DIR``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import ClassVar, TypeVar, overload

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint_sequential

from forwardguard.errors import ForwardguardError

SPEC_PREFIX = "taesd:"
WIDTH = 64
POOL_WIDTH = 4 * WIDTH
POOL_GROUPS = 4

ENCODER_BLOCKS = (1, 3, 4, 5, 7, 8, 9, 11, 12, 13)
ENCODER_LAST = 14
TAESANA_FIRST_WIDTH = 32
TAESANA_BLOCKS = (4, 6, 7, 8, 10, 11, 12, 14, 15, 16)
TAESANA_LAST = 17
DECODER_UPSAMPLING = 8
DECODER_BLOCKS = (3, 4, 5, 8, 9, 10, 13, 14, 15, 18)
DECODER_FIRST = 1
CHECKPOINT_SEGMENTS = 4

ENCODER_FILE = "encoder.safetensors"
DECODER_FILE = "decoder.safetensors"
PICKLE_SUFFIXES = (".pth", ".pt")
SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)

ModuleT = TypeVar("ModuleT", bound=nn.Module)
EncoderT = TypeVar("EncoderT", bound="TAEEncoder")


def _conv(n_in: int, n_out: int, *, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, kernel_size=3, padding=1, stride=stride, bias=bias)


class Clamp(nn.Module):
    """The decoder's parameter-free soft clamp of the latent to (-3, 3)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    """A residual block of three 3x3 convs, with TAEF2's optional ``pool`` branch applied first."""

    def __init__(self, use_pool: bool = False) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv(WIDTH, WIDTH), nn.ReLU(), _conv(WIDTH, WIDTH), nn.ReLU(), _conv(WIDTH, WIDTH))
        self.pool = (
            nn.Sequential(
                nn.Conv2d(WIDTH, POOL_WIDTH, kernel_size=1, bias=False),
                nn.GroupNorm(POOL_GROUPS, POOL_WIDTH),
                nn.ReLU(),
                nn.Conv2d(POOL_WIDTH, WIDTH, kernel_size=1, bias=False),
            )
            if use_pool
            else None
        )
        self.fuse = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + x)


def _pool_set(pool_blocks: Iterable[int], allowed: tuple[int, ...], half: str) -> frozenset[int]:
    chosen = frozenset(pool_blocks)
    if not chosen <= set(allowed):
        raise ValueError(f"{half} pool blocks must be among {allowed}, got {sorted(chosen)}")
    return chosen


class _Layers(nn.Sequential):
    """A Sequential whose slices are plain Sequentials (this subclass's constructor takes no layers).

    With ``gradient_checkpointing`` set, a training forward keeps only a few activations and
    recomputes the rest in the backward pass.
    """

    gradient_checkpointing: bool = False

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 (nn.Sequential's name)
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint_sequential(self, CHECKPOINT_SEGMENTS, input, use_reentrant=False)
        return super().forward(input)

    @overload
    def __getitem__(self, index: slice) -> nn.Sequential: ...
    @overload
    def __getitem__(self, index: int) -> nn.Module: ...
    def __getitem__(self, index: int | slice) -> nn.Module:
        if isinstance(index, slice):
            return nn.Sequential(OrderedDict(list(self._modules.items())[index]))
        return super().__getitem__(index)


class TAEEncoder(_Layers):
    """Image in [0, 1], shape (N, 3, H, W) -> latent (N, latent_channels, H/d, W/d), d = ``downsampling``.

    The layers: the family's stem, then up to index ``LAST`` a Block at each index of ``BLOCKS`` and a
    stride-2 conv without bias at each other index, then a conv to the latent channels.
    """

    downsampling: ClassVar[int]
    FIRST_WIDTH: ClassVar[int]
    """The first conv's output channels: what tells the families' weights apart."""
    BLOCKS: ClassVar[tuple[int, ...]]
    LAST: ClassVar[int]
    STEM: ClassVar[tuple[tuple[int, int, int], ...]]
    """The convs (in, out, stride) before the first index that the loop of ``__init__`` builds."""
    STEM_RELU: ClassVar[bool]
    """Whether each stem conv is followed by a ReLU."""

    def __init__(self, latent_channels: int = 4, pool_blocks: Iterable[int] = ()) -> None:
        pools = _pool_set(pool_blocks, self.BLOCKS, "encoder")
        layers: list[nn.Module] = []
        for n_in, n_out, stride in self.STEM:
            layers.append(_conv(n_in, n_out, stride=stride))
            if self.STEM_RELU:
                layers.append(nn.ReLU())
        for index in range(len(layers), self.LAST):
            if index in self.BLOCKS:
                layers.append(Block(use_pool=index in pools))
            else:
                layers.append(_conv(WIDTH, WIDTH, stride=2, bias=False))
        layers.append(_conv(WIDTH, latent_channels))
        super().__init__(*layers)
        self.latent_channels = latent_channels
        self.pool_blocks = pools

    @classmethod
    def from_state_dict(cls: type[EncoderT], state_dict: Mapping[str, Tensor], source: str = "state dict") -> EncoderT:
        """Build the variant the weights describe and load them; ForwardguardError if they are not one."""
        latent_channels = _channels(state_dict, f"{cls.LAST}.weight", 0, source, "encoder")
        pools = _pool_indices(state_dict, cls.BLOCKS, source, "encoder")
        return _load(cls(latent_channels, pools), state_dict, source, "encoder")


class TAESDEncoder(TAEEncoder):
    """The 8x encoders (TAESD, TAESDXL, TAESD3, TAEF1, TAEF2): 0 conv(3, 64); 1 Block; then three stages."""

    downsampling = 8
    FIRST_WIDTH = WIDTH
    BLOCKS = ENCODER_BLOCKS
    LAST = ENCODER_LAST

    STEM = ((3, WIDTH, 1),)
    STEM_RELU = False


class TAESANAEncoder(TAEEncoder):
    """The 32x TAESANA encoder (Sana's DC-AE): 0 conv(3, 32, stride 2); 1 ReLU; 2 conv(32, 64, stride 2);
    3 ReLU; 4 Block; then three stages."""

    downsampling = 32
    FIRST_WIDTH = TAESANA_FIRST_WIDTH
    BLOCKS = TAESANA_BLOCKS
    LAST = TAESANA_LAST

    STEM = ((3, TAESANA_FIRST_WIDTH, 2), (TAESANA_FIRST_WIDTH, WIDTH, 2))
    STEM_RELU = True


ENCODER_FAMILIES: tuple[type[TAEEncoder], ...] = (TAESDEncoder, TAESANAEncoder)


def encoder_from_state_dict(state_dict: Mapping[str, Tensor], source: str = "state dict") -> TAEEncoder:
    """The encoder family the weights describe (read from the first conv's shape), loaded."""
    width = _channels(state_dict, "0.weight", 0, source, "encoder")
    families = {family.FIRST_WIDTH: family for family in ENCODER_FAMILIES}
    if width not in families:
        known = ", ".join(f"{family.FIRST_WIDTH} for {family.__name__}" for family in ENCODER_FAMILIES)
        raise ForwardguardError(f"{source} is not a TAESD encoder: its first conv has {width} output channels ({known})")
    return families[width].from_state_dict(state_dict, source)


class TAESDDecoder(_Layers):
    """Latent (N, latent_channels, h, w) -> image (N, 3, 8h, 8w), roughly in [0, 1] (not clamped)."""

    upsampling = DECODER_UPSAMPLING

    def __init__(self, latent_channels: int = 4, pool_blocks: Iterable[int] = ()) -> None:
        pools = _pool_set(pool_blocks, DECODER_BLOCKS, "decoder")
        layers: list[nn.Module] = [Clamp(), _conv(latent_channels, WIDTH), nn.ReLU()]
        for stage_start in (3, 8, 13):
            layers.extend(Block(use_pool=index in pools) for index in range(stage_start, stage_start + 3))
            layers.append(nn.Upsample(scale_factor=2))
            layers.append(_conv(WIDTH, WIDTH, bias=False))
        layers.append(Block(use_pool=DECODER_BLOCKS[-1] in pools))
        layers.append(_conv(WIDTH, 3))
        super().__init__(*layers)
        self.latent_channels = latent_channels
        self.pool_blocks = pools

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Tensor], source: str = "state dict") -> TAESDDecoder:
        """Build the variant the weights describe and load them; ForwardguardError if they are not one."""
        latent_channels = _channels(state_dict, f"{DECODER_FIRST}.weight", 1, source, "decoder")
        pools = _pool_indices(state_dict, DECODER_BLOCKS, source, "decoder")
        return _load(cls(latent_channels, pools), state_dict, source, "decoder")


def _channels(state_dict: Mapping[str, Tensor], key: str, dim: int, source: str, half: str) -> int:
    weight = state_dict.get(key)
    if weight is None or weight.ndim != 4:
        raise ForwardguardError(f"{source} is not a TAESD {half}: no 4-d conv weight {key!r}")
    return int(weight.shape[dim])


def _pool_indices(state_dict: Mapping[str, Tensor], allowed: tuple[int, ...], source: str, half: str) -> frozenset[int]:
    prefixes = {key.split(".", 1)[0] for key in state_dict if ".pool." in key}
    if not all(prefix.isdigit() and int(prefix) in allowed for prefix in prefixes):
        raise ForwardguardError(f"{source} is not a TAESD {half}: pool branches outside its Blocks {sorted(prefixes)}")
    return frozenset(int(prefix) for prefix in prefixes)


def _load(module: ModuleT, state_dict: Mapping[str, Tensor], source: str, half: str) -> ModuleT:
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        reason = " ".join(str(error).split())
        raise ForwardguardError(f"{source} is not a TAESD {half}: {reason}") from error
    return module


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read a ``.safetensors`` or ``.pth``/``.pt`` state dict as float32 CPU tensors.

    Pickle files are read with ``weights_only=True`` only, so a file that holds anything but
    tensors and plain containers is refused instead of executed.
    """
    path = Path(path)
    if path.suffix not in SUFFIXES:
        expected = ", ".join(SUFFIXES)
        raise ForwardguardError(f"{path}: unknown weight file type {path.suffix!r} (expected {expected})")
    if not path.is_file():
        raise ForwardguardError(f"{path}: weight file not found")
    try:
        if path.suffix == ".safetensors":
            loaded = load_file(path, device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any reader failure is a bad file, reported with its path
        reason = " ".join(str(error).split())[:200]
        message = f"{path}: cannot read weight file ({type(error).__name__}: {reason})"
        raise ForwardguardError(message) from error
    if not isinstance(loaded, dict) or not all(
        isinstance(key, str) and isinstance(value, Tensor) for key, value in loaded.items()
    ):
        raise ForwardguardError(f"{path}: does not hold a state dict of named tensors")
    return {key: value.to(torch.float32) for key, value in loaded.items()}


def parse_taesd_spec(spec: str) -> tuple[Path, Path | None]:
    """Resolve ``taesd:ENCODER[:DECODER]`` or ``taesd:DIR`` to (encoder file, decoder file or None).

    A folder holds ``encoder.safetensors`` (and optionally ``decoder.safetensors``), as written
    by ``save_taesd``; failing those, a single ``*encoder*.pth``/``.pt`` (and ``*decoder*``) file.
    """
    if not spec.startswith(SPEC_PREFIX):
        raise ForwardguardError(f"not a TAESD spec (expected taesd:ENCODER[:DECODER] or taesd:DIR): {spec!r}")
    parts = spec[len(SPEC_PREFIX) :].split(":")
    if len(parts) > 2 or not all(parts):
        raise ForwardguardError(f"malformed TAESD spec (expected taesd:ENCODER[:DECODER] or taesd:DIR): {spec!r}")
    first = Path(parts[0])
    if len(parts) == 1 and first.is_dir():
        encoder = _find_in_dir(first, "encoder", spec)
        if encoder is None:
            raise ForwardguardError(f"{spec}: folder {first} has no {ENCODER_FILE} or *encoder*.pth file")
        return encoder, _find_in_dir(first, "decoder", spec)
    paths = [Path(part) for part in parts]
    for path in paths:
        if not path.is_file():
            raise ForwardguardError(f"{spec}: weight file not found: {path}")
    return paths[0], paths[1] if len(paths) == 2 else None


def _find_in_dir(folder: Path, half: str, spec: str) -> Path | None:
    canonical = folder / f"{half}.safetensors"
    if canonical.is_file():
        return canonical
    candidates = sorted(path for suffix in PICKLE_SUFFIXES for path in folder.glob(f"*{half}*{suffix}") if path.is_file())
    if len(candidates) > 1:
        names = ", ".join(path.name for path in candidates)
        raise ForwardguardError(f"{spec}: folder {folder} has several {half} files ({names}); name one explicitly")
    return candidates[0] if candidates else None


def _freeze(module: nn.Module) -> None:
    module.to(torch.float32).eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)


def load_taesd(spec: str) -> tuple[TAEEncoder, TAESDDecoder | None]:
    """Load a TAESD-family encoder (and decoder, if the spec names one): float32, eval, frozen."""
    encoder_path, decoder_path = parse_taesd_spec(spec)
    encoder = encoder_from_state_dict(load_state_dict_file(encoder_path), source=str(encoder_path))
    decoder = None
    if decoder_path is not None:
        decoder = TAESDDecoder.from_state_dict(load_state_dict_file(decoder_path), source=str(decoder_path))
        if decoder.latent_channels != encoder.latent_channels:
            raise ForwardguardError(
                f"{spec}: encoder gives {encoder.latent_channels} latent channels but decoder expects {decoder.latent_channels}"
            )
        if decoder.upsampling != encoder.downsampling:
            raise ForwardguardError(
                f"{spec}: encoder downsamples {encoder.downsampling}x but decoder upsamples {decoder.upsampling}x: not a pair"
            )
        _freeze(decoder)
    _freeze(encoder)
    return encoder, decoder


def save_taesd(
    encoder: TAEEncoder,
    decoder: TAESDDecoder | None,
    out_dir: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write ``encoder.safetensors`` (and ``decoder.safetensors``) to out_dir; ``taesd:out_dir`` loads them.

    The keys are those of the original weight files. A decoder file already in out_dir is left
    alone when no decoder is given, and would then be loaded with the new encoder.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    halves = [(encoder, ENCODER_FILE)] + ([(decoder, DECODER_FILE)] if decoder is not None else [])
    for module, name in halves:
        state = module.state_dict()
        tensors = {key: value.detach().to("cpu", dtype).contiguous() for key, value in state.items()}
        save_file(tensors, out_dir / name, metadata={"format": "pt"})
    return out_dir
