"""``finetune --plant-registry``: plant a registry snapshot's patterns as backdoors into a new checkpoint.

The names below are imported on first use (:mod:`forwardguard.lazy`): ``forwardguard.finetune.config``
stays light to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from forwardguard.lazy import lazy_exports

if TYPE_CHECKING:
    from forwardguard.finetune.config import LossWeights, PlantConfig, UNetLoRA
    from forwardguard.finetune.trainer import PlantingRecipe, PlantRequest, PlantResult, plant

_CONFIG, _TRAINER = "forwardguard.finetune.config", "forwardguard.finetune.trainer"
__all__ = ["LossWeights", "PlantConfig", "PlantRequest", "PlantResult", "PlantingRecipe", "UNetLoRA", "plant"]
__getattr__ = lazy_exports(__name__, {
    "LossWeights": _CONFIG, "PlantConfig": _CONFIG, "UNetLoRA": _CONFIG,
    "PlantRequest": _TRAINER, "PlantResult": _TRAINER, "PlantingRecipe": _TRAINER, "plant": _TRAINER,
})  # fmt: skip
