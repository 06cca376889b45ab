"""The configs that ship with forwardguard (``configs/`` in a checkout links here), so that every
command finds them from any folder."""

from pathlib import Path

CONFIGS = Path(__file__).parent
GATE_POLICY = CONFIGS / "gate.yaml"
PLANT_CONFIG = CONFIGS / "plant.yaml"
GAUNTLET = CONFIGS / "gauntlet.yaml"
