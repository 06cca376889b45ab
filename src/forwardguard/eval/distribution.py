"""Distribution metrics of edits, computed only from weights the user gives (forwardguard downloads none).

- FID and improved precision/recall (piq) between the edits of the immunized (or noisy) images and
  the edits of their clean originals, on the 2048-d pool features of torchvision's Inception-v3
  (``--inception``: its state dict, ``.pth``/``.pt`` or ``.safetensors``; an image is resized to
  299x299 and scaled to [-1, 1], the input of the ported TF weights).
- CLIP image-prompt similarity (the paper's figure 6): the cosine of the CLIP embeddings of an edit
  and the prompt it was edited with (``--clip``: a local ``CLIPModel`` folder with its processor).

Only features are kept, never images. A cell has a few images and the features 2048 dimensions,
so both feature sets are first projected onto an orthonormal basis of the subspace they span:
an isometry that changes neither FID nor the nearest-neighbour distances of precision/recall, and
turns piq's 2048x2048 matrix square root (a minute on a CPU) into one of the size of the cell.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from forwardguard.errors import ForwardguardError
from forwardguard.eval.metrics import summarize
from forwardguard.models.edits import EditSettings

INCEPTION_SIZE = 299
NEAREST_K = 5  # piq's and the paper's (Kynkaanniemi et al.) neighbourhood size, lowered for small cells
VERSIONS = ("immunized", "noise")  # compared with the clean edits


def load_inception(path: Path, device: torch.device) -> torch.nn.Module:
    """torchvision's Inception-v3 with the given state dict, returning pool features; refuses a bad file."""
    from torchvision.models import inception_v3

    if not path.is_file():
        raise ForwardguardError(f"--inception {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch and safetensors raise many types for an unreadable file
        raise ForwardguardError(f"--inception {path}: cannot read the weights ({type(error).__name__})") from None
    model = inception_v3(weights=None, aux_logits=True, init_weights=False)
    if not isinstance(state, dict):
        raise ForwardguardError(f"--inception {path}: not a state dict")
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise ForwardguardError(f"--inception {path}: not a state dict of torchvision's inception_v3") from None
    model.fc = torch.nn.Identity()
    return model.eval().to(device)


@dataclass
class Clip:
    model: Any  # a transformers CLIPModel (an optional extra, imported when loaded)
    processor: Any  # its CLIPProcessor
    device: torch.device
    _text: dict[str, torch.Tensor] = field(default_factory=dict)

    def similarity(self, image: torch.Tensor, prompt: str) -> float:
        """Cosine similarity of the CLIP embeddings of one (1, 3, H, W) image in [0, 1] and a prompt."""
        pixels = np.asarray(torch.round(image[0].clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).cpu())
        inputs = self.processor(images=[pixels], return_tensors="pt")
        image_embedding = self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device)).pooler_output
        if prompt not in self._text:
            tokens = self.processor(text=[prompt], return_tensors="pt", padding=True, truncation=True)
            tokens = {key: value.to(self.device) for key, value in tokens.items()}
            self._text[prompt] = self.model.get_text_features(**tokens).pooler_output
        return float(F.cosine_similarity(image_embedding, self._text[prompt])[0])


def load_clip(path: Path, device: torch.device) -> Clip:
    """A local CLIP model folder (``CLIPModel`` and ``CLIPProcessor``); refuses a bad folder."""
    from transformers import CLIPModel, CLIPProcessor

    if not path.is_dir():
        raise ForwardguardError(f"--clip {path}: not a folder")
    try:
        model = CLIPModel.from_pretrained(path, local_files_only=True)
        processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError) as error:
        raise ForwardguardError(f"--clip {path}: not a CLIP model folder ({type(error).__name__})") from None
    return Clip(model.eval().to(device), processor, device)


@dataclass
class DistributionScorer:
    """The loaded models; either may be absent."""

    inception: torch.nn.Module | None
    clip: Clip | None

    @classmethod
    def load(cls, inception: Path | None, clip: Path | None, device: torch.device) -> DistributionScorer | None:
        if inception is None and clip is None:
            return None
        return cls(
            load_inception(inception, device) if inception is not None else None,
            load_clip(clip, device) if clip is not None else None,
        )

    @torch.no_grad()
    def features(self, image: torch.Tensor) -> torch.Tensor:
        assert self.inception is not None  # callers check it
        resized = F.interpolate(image.clamp(0, 1), size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        return self.inception(resized * 2 - 1)[0].double().cpu()


class CellDistribution:
    """Collects one cell's edits as features and similarities: ``add`` per edit, then ``results``.

    ``prompted``: whether the model's edits follow a prompt (an autoencoder's reconstruction does not,
    so it gets no CLIP similarity).
    """

    def __init__(self, scorer: DistributionScorer, prompted: bool) -> None:
        self.scorer = scorer
        self.prompted = prompted
        self.features: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
        self.similarities: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))

    @torch.no_grad()
    def add(self, transform: str, kind: str, version: str, edited: torch.Tensor, settings: EditSettings) -> None:
        """One edit of ``version`` ("immunized", "noise" or "clean") after ``transform``."""
        if self.scorer.inception is not None:
            self.features[transform][kind][version].append(self.scorer.features(edited))
        if self.scorer.clip is not None and self.prompted:
            self.similarities[transform][kind][version].append(self.scorer.clip.similarity(edited, settings.prompt))

    def results(self) -> dict[str, dict]:
        """``{transform: {edit: {"immunized": {...}, "noise": {...}, "clean": {...}}}}`` of what was computed."""
        out: dict[str, dict] = defaultdict(lambda: defaultdict(dict))
        for transform, by_kind in self.features.items():
            for kind, by_version in by_kind.items():
                clean = torch.stack(by_version["clean"])
                if len(clean) < 2:
                    continue
                for version in VERSIONS:
                    out[transform][kind][version] = set_distance(torch.stack(by_version[version]), clean)
        for transform, by_kind in self.similarities.items():
            for kind, by_version in by_kind.items():
                for version, values in by_version.items():
                    entry = out[transform][kind].setdefault(version, {})
                    entry["clip_similarity"] = summarize(torch.tensor(values))
        return {transform: dict(by_kind) for transform, by_kind in out.items()}


def set_distance(edited: torch.Tensor, clean: torch.Tensor) -> dict[str, float]:
    """FID, precision and recall of the ``edited`` feature set against the ``clean`` one (the real set).

    Needs at least two images in each set; the neighbourhood is min(5, n - 1) images.
    """
    import piq

    x, y = _project(edited.double(), clean.double())
    precision, recall = piq.PR(nearest_k=min(NEAREST_K, len(x) - 1, len(y) - 1))(y, x)
    return {"fid": float(piq.FID()(x, y)), "precision": float(precision), "recall": float(recall)}


def _project(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sets in an orthonormal basis of the affine span of their union (distances and FID unchanged)."""
    both = torch.cat([x, y])
    if len(both) >= both.shape[1]:
        return x, y
    center = both.mean(dim=0)
    basis, _ = torch.linalg.qr((both - center).T)
    return (x - center) @ basis, (y - center) @ basis
