"""Evaluation: image-similarity metrics, the transform gauntlet, the immunity matrix, the report and the gate."""
