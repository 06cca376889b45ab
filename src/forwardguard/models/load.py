"""One string names a model everywhere: parse a model spec and load it."""

from __future__ import annotations

import torch

from forwardguard.errors import ForwardguardError
from forwardguard.models.base import ImageModel


def load_model(spec: str, *, device: str | torch.device = "cpu") -> ImageModel:
    """Load the model a spec names, in float32 eval mode with frozen weights, on ``device``.

    - ``tiny`` / ``tiny:SEED``: a tiny Stable Diffusion with seeded random weights (offline);
    - ``taesd:ENCODER[:DECODER]`` or ``taesd:DIR``: a TAESD-family autoencoder from local files;
    - anything else: a Stable Diffusion diffusers folder or hub id.
    """
    spec = spec.strip()
    if not spec:
        raise ForwardguardError("empty model spec")
    if spec == "tiny" or spec.startswith("tiny:"):
        from forwardguard.models.tiny import load_tiny

        if spec != "tiny" and not spec.partition(":")[2].isdigit():
            raise ForwardguardError(f"model spec {spec!r}: tiny takes a non-negative integer seed, as in tiny:3")
        model: ImageModel = load_tiny(spec)
    elif spec.startswith("taesd:"):
        from forwardguard.models.autoencoder import AutoencoderModel
        from forwardguard.models.taesd import load_taesd

        model = AutoencoderModel(spec, *load_taesd(spec))
    else:
        from forwardguard.models.stable_diffusion import load_stable_diffusion

        model = load_stable_diffusion(spec)
    check_finite_weights(model)
    return model.to(resolve_device(device))


def check_finite_weights(model: ImageModel) -> None:
    """ForwardguardError naming the first weight with a NaN or an infinity: such a model computes NaN
    losses, and an attack against it would write its input unchanged as if it were immunized."""
    for part, module in model.modules().items():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise ForwardguardError(
                    f"model {model.spec!r}: weight {part}.{name} holds NaN or infinite values (corrupt weights?)"
                )


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` means CUDA when available, else the CPU; asking for CUDA without one is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ForwardguardError(f"unknown device {device!r} (use auto, cpu or cuda)") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ForwardguardError(f"device {device!r} asked for, but CUDA is not available here")
    return resolved
