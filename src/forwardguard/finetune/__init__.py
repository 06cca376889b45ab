"""``finetune --plant-registry``: plant a registry snapshot's patterns as backdoors into a new checkpoint."""

from forwardguard.finetune.config import LossWeights, PlantConfig, UNetLoRA
from forwardguard.finetune.trainer import PlantingRecipe, PlantRequest, PlantResult, plant

__all__ = ["LossWeights", "PlantConfig", "PlantRequest", "PlantResult", "PlantingRecipe", "UNetLoRA", "plant"]
