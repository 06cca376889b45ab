"""The names of the image-similarity metrics and which way each one points, without torch or piq: the
report, the gate and the HTML page read them; :mod:`forwardguard.eval.metrics` computes them."""

METRICS = ("ssim", "psnr", "vifp", "fsim", "srsim", "gmsd", "vsi", "dss", "haarpsi")
"""Metric names, in report order: the paper's table 1, then table 4."""

HIGHER_IS_MORE_SIMILAR: dict[str, bool] = {name: name != "gmsd" for name in METRICS}
"""True for similarities (1 or 80 dB for identical images); False for GMSD, a distance (0 when identical)."""
