"""What planting trains on: clean images from ``--data`` and the registered patterns of a snapshot.

Every sample is a pure function of (seed, position): position ``p`` of the global sample stream
picks ``permutation(epoch)[p % N]`` and draws its crop, flip and noise from a generator seeded by
``(seed, p)``. A process of rank ``r`` out of ``w`` takes positions
``step * b * w + r * b ... + b`` at each step, so the data is sharded across processes, a resumed
run sees exactly the samples the interrupted one would have seen, and ``w`` processes with batch
``b`` see the same global batch as one process with batch ``w * b``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from forwardguard.errors import ForwardguardError
from forwardguard.finetune.synthetic import synthetic_image
from forwardguard.images import DEFAULT_MAX_PIXELS, iter_image_files, read_image, to_tensor

if TYPE_CHECKING:
    from forwardguard.registry import PatternRecord

CROP_MULTIPLE = 8
"""A crop's side is a multiple of the encoders' 8. Where a pattern crop starts is the plant config's
``pattern_crop_grid``: on the 8-pixel grid, the model sees the registered image in its own grid phase
only, and a copy shifted by an adversary's crop (one row and column off) escaped a model planted so
(issue 13); at any offset (grid 1), it sees every phase. Planting transforms that shift (``rshift_7``)
reach the other phases too, on a share of the draws."""


def sample_generator(seed: int, position: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + position) % (2**63))


@dataclass(frozen=True)
class StepPositions:
    """Which global sample positions a process takes at a step (see the module docstring)."""

    batch_size: int
    rank: int
    world_size: int

    def at(self, step: int) -> range:
        start = step * self.batch_size * self.world_size + self.rank * self.batch_size
        return range(start, start + self.batch_size)


def index_at(position: int, size: int, seed: int) -> int:
    """The item at a global position: epochs of fresh seeded permutations of ``size`` items."""
    epoch, offset = divmod(position, size)
    return int(_permutation(size, seed * 7919 + epoch)[offset])


@lru_cache(maxsize=8)
def _permutation(size: int, seed: int) -> torch.Tensor:
    """One epoch's order, drawn once (every sample of the epoch indexes into it)."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))


def paired_crop(images: list[np.ndarray], crop: int, generator: torch.Generator, grid: int = CROP_MULTIPLE) -> list[np.ndarray]:
    """The same random crop of same-sized (H, W, C) arrays, starting on a multiple of ``grid`` pixels;
    a side smaller than ``crop`` is kept whole."""
    height, width = images[0].shape[:2]
    top = _start(height, crop, grid, generator)
    left = _start(width, crop, grid, generator)
    return [image[top : top + crop, left : left + crop] for image in images]


def _start(length: int, crop: int, grid: int, generator: torch.Generator) -> int:
    slots = max(length - crop, 0) // grid
    return int(torch.randint(slots + 1, (1,), generator=generator)) * grid


class CleanImages:
    """Clean training images: a folder of image files, or a ``datasets`` dataset saved to disk.

    ``crop(position, seed)`` gives a (3, crop, crop) tensor, augmented so that a few photographs stand
    for many (clean utility must hold on images unlike them): the image rescaled by a random factor
    (and up, if a side is then smaller than the crop), a crop at a random offset, a random horizontal
    flip, random brightness, contrast, saturation and hue, and sometimes grayscale. A share
    ``synthetic_fraction`` of the crops are synthetic images instead (:mod:`forwardguard.finetune.synthetic`:
    flat, gradient, shapes, text, texture, grating, or the photo crop darkened).
    """

    def __init__(
        self, data: Path, crop_size: int, *, synthetic_fraction: float = 0.0, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> None:
        self.crop_size = crop_size
        self.synthetic_fraction = synthetic_fraction
        self.max_pixels = max_pixels
        if not data.exists():
            raise ForwardguardError(f"--data {data}: no such folder")
        self._dataset = None
        if (data / "state.json").is_file() or (data / "dataset_dict.json").is_file():
            self._dataset = _load_saved_dataset(data)
            self._files: list[Path] = []
            size = len(self._dataset)
        else:
            self._files = iter_image_files([data]) if data.is_dir() else []
            size = len(self._files)
        if size == 0:
            raise ForwardguardError(f"--data {data}: no images found (PNG, JPEG or WebP files, or a saved datasets dataset)")
        self.size = size

    def __len__(self) -> int:
        return self.size

    def load(self, index: int) -> np.ndarray:
        if self._dataset is not None:
            encoded = self._dataset[index]["image"]  # {"bytes", "path"}: bytes, or a file's path
            source = encoded["bytes"] if encoded["bytes"] is not None else Path(encoded["path"])
            return read_image(source, max_pixels=self.max_pixels, name=f"--data image {index}").rgb
        return read_image(self._files[index], max_pixels=self.max_pixels).rgb

    def crop(self, position: int, seed: int) -> torch.Tensor:
        rgb = self.load(index_at(position, self.size, seed))
        generator = sample_generator(seed, position)
        scale = float(torch.empty(1).uniform_(*CLEAN_SCALES, generator=generator))
        rgb = cover(rgb, self.crop_size, scale)
        height, width = rgb.shape[:2]
        top = int(torch.randint(height - self.crop_size + 1, (1,), generator=generator))
        left = int(torch.randint(width - self.crop_size + 1, (1,), generator=generator))
        crop = rgb[top : top + self.crop_size, left : left + self.crop_size]
        if float(torch.rand(1, generator=generator)) < self.synthetic_fraction:
            return _jitter_colours(synthetic_image(self.crop_size, generator, photo=crop), generator)
        tensor = to_tensor(crop)
        if torch.rand(1, generator=generator) < 0.5:
            tensor = tensor.flip(-1)
        return _jitter_colours(tensor, generator)


CLEAN_SCALES = (0.5, 1.5)
"""The range of the random rescaling of a clean image before it is cropped."""


def _jitter_colours(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random brightness and contrast (x0.6-1.4), saturation (x0.3-1.7), a hue rotation by any angle, and
    grayscale one time in five.

    The hue rotation shows every colour a texture comes in, which a few clean photographs do not: a
    backdoor made invariant to shifts, mirrors and rotations keys on colour and local texture. (It did
    not stop a clean orange dahlia from firing the backdoor: docs/benchmarks.md.)
    """
    from torchvision.transforms.v2 import functional as TF

    brightness, contrast, saturation, hue, gray = torch.rand(5, generator=generator).tolist()
    image = TF.adjust_brightness(image, 0.6 + 0.8 * brightness)
    image = TF.adjust_contrast(image, 0.6 + 0.8 * contrast)
    image = TF.adjust_saturation(image, 0.3 + 1.4 * saturation)
    image = TF.adjust_hue(image, hue - 0.5)
    if gray < 0.2:
        image = TF.rgb_to_grayscale(image, num_output_channels=3)
    return image.clamp(0, 1)


def cover(rgb: np.ndarray, size: int, scale: float = 1.0) -> np.ndarray:
    """Scale an image by ``scale``, and further up (keeping its aspect) until both sides are at least ``size``."""
    height, width = rgb.shape[:2]
    scale = max(scale, size / min(height, width))
    if scale == 1.0:
        return rgb
    resized = Image.fromarray(rgb).resize(
        (max(size, round(width * scale)), max(size, round(height * scale))), Image.Resampling.BICUBIC
    )
    return np.asarray(resized)


def _load_saved_dataset(path: Path):  # noqa: ANN202 (datasets.Dataset, imported lazily)
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError, FileNotFoundError) as error:
        raise ForwardguardError(f"--data {path}: not a readable datasets dataset ({error})".splitlines()[0]) from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise ForwardguardError(f"--data {path}: a DatasetDict needs a 'train' split, has {sorted(loaded)}")
        loaded = loaded["train"]
    if "image" not in loaded.column_names:
        raise ForwardguardError(f"--data {path}: the dataset has no 'image' column (columns: {loaded.column_names})")
    if not isinstance(loaded.features["image"], datasets.Image):
        raise ForwardguardError(f"--data {path}: the 'image' column is {loaded.features['image']}, not a datasets Image")
    # The encoded files, not datasets' own decoding: they are read by forwardguard.images.read_image as every image is.
    return loaded.cast_column("image", datasets.Image(decode=False))


@dataclass(frozen=True)
class PlantingSample:
    """The same crop of a registered pattern's immunized image and of its clean original."""

    immunized: torch.Tensor
    clean: torch.Tensor
    pattern_id: str


PIXEL_CACHE_BYTES = 256 * 2**20
"""The pixels of recently drawn patterns a process keeps: 256 MiB (about 2,700 pairs of 128x128
images, 40 of 1024x1024). Planting memory does not grow with the number of patterns beyond their
records; a pattern that left the cache is read again (and its hash verified again) when drawn."""

Pair = tuple[np.ndarray, np.ndarray]


class PixelCache:
    """The least recently used (immunized, clean) pixel pairs, by pattern index, within ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._pairs: OrderedDict[int, Pair] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pairs)

    def get(self, index: int, load: Callable[[], Pair]) -> Pair:
        if index in self._pairs:
            self._pairs.move_to_end(index)
            return self._pairs[index]
        pair = load()
        self._pairs[index] = pair
        self.bytes += _nbytes(pair)
        while self.bytes > self.max_bytes:
            _, oldest = self._pairs.popitem(last=False)
            self.bytes -= _nbytes(oldest)
        return pair


def _nbytes(pair: Pair) -> int:
    return sum(array.nbytes for array in pair)


class SnapshotRecords:
    """A snapshot's pattern records by index (the registry's order: oldest first), without holding
    them: 32 bytes of id per pattern (32 MB for a million, where the records would take about a
    kilobyte each), a record read again by its id when asked for. Iterating streams the records from
    the registry a page at a time."""

    def __init__(self, registry, snapshot: str, ids: bytes) -> None:  # noqa: ANN001 (Registry)
        self.registry = registry
        self.snapshot = snapshot
        self.ids = np.frombuffer(ids, dtype="S32")

    def __len__(self) -> int:
        return len(self.ids)

    def id(self, index: int) -> str:
        return self.ids[index].hex()

    def __getitem__(self, index: int) -> PatternRecord:
        return self.registry.get_pattern(self.id(index))

    def __iter__(self) -> Iterator[PatternRecord]:
        return self.registry.iter_patterns(snapshot=self.snapshot)


class SnapshotPatterns:
    """The patterns a snapshot froze: their ids (:class:`SnapshotRecords`), and the pixels of the
    recently drawn ones (:class:`PixelCache`, ``cache_bytes``), each read from the registry with its
    blob's hash verified. One pass over the snapshot's records, streamed, checks their targets and
    takes the figures planting needs of all of them (the largest eps, the smallest side)."""

    def __init__(self, registry, snapshot: str, *, cache_bytes: int = PIXEL_CACHE_BYTES) -> None:  # noqa: ANN001 (Registry)
        self.registry = registry
        self.cache = PixelCache(cache_bytes)
        ids = bytearray()
        max_eps, smallest_side = 0.0, None
        for record in registry.iter_patterns(snapshot=snapshot):
            if record.target != "gray":
                raise ForwardguardError(
                    f"pattern {record.id[:12]} has target {record.target!r}: planting supports gray targets only"
                    " (the registry keeps no target images)"
                )
            ids += bytes.fromhex(record.id)
            max_eps = max(max_eps, float(record.params.get("eps", 16 / 255)))
            side = min(record.width, record.height)
            smallest_side = side if smallest_side is None else min(smallest_side, side)
        if smallest_side is None:
            raise ForwardguardError(f"snapshot {snapshot!r} holds no patterns: nothing to plant")
        self.records = SnapshotRecords(registry, snapshot, bytes(ids))
        self.max_eps: float = max_eps
        self.smallest_side: int = smallest_side

    def __len__(self) -> int:
        return len(self.records)

    def verify(self) -> None:
        """Read every pattern once, keeping none, so that a corrupted blob stops the run before training."""
        for record in self.records:
            self.registry.load_sample(record)

    def pixels(self, index: int) -> Pair:
        """The (immunized, clean) pixels of pattern ``index`` of :attr:`records`."""
        return self.cache.get(index, lambda: self._read(index))

    def _read(self, index: int) -> Pair:
        sample = self.registry.load_sample(self.records[index])
        return sample.immunized, sample.clean

    def crop(self, position: int, seed: int, size: int, grid: int = CROP_MULTIPLE) -> PlantingSample:
        index = index_at(position, len(self.records), seed + 1)
        immunized, clean = paired_crop(list(self.pixels(index)), size, sample_generator(seed, position), grid)
        return PlantingSample(immunized=to_tensor(immunized), clean=to_tensor(clean), pattern_id=self.records.id(index))
