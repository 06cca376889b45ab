"""A model's fingerprint: the sha256 of its weights, independent of how they were stored.

Every tensor is hashed as float32 in key order, so that the same weights saved as float16
safetensors or as a float32 ``.pth`` give the same fingerprint, and any changed weight gives another.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def fingerprint_state(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu", torch.float32).contiguous()
        digest.update(key.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def fingerprint_modules(modules: dict[str, nn.Module]) -> str:
    state = {f"{name}.{key}": value for name, module in modules.items() for key, value in module.state_dict().items()}
    return fingerprint_state(state)
