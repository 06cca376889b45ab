"""Stable Diffusion 1.5-shaped components built from configs: random weights, nothing downloaded.

The VAE, UNet and text encoder have SD 1.5's layer shapes (so they cost what SD 1.5 costs to run
and to differentiate: about 84 M parameters in the VAE and 860 M in the UNet), and the scheduler
is SD 1.5's. Only the tokenizer is smaller: forwardguard's offline byte-level CLIP tokenizer, padded
to SD's 77 tokens, with a text-embedding table to match (so the text encoder has 86 M parameters
instead of 123 M; its 12 layers of width 768 are SD 1.5's). For benchmarks and GPU checks only:
the weights mean nothing.

    from sd15_shaped import sd15_shaped_model      # with bench/ on sys.path (as a bench script has)
    model = sd15_shaped_model("cuda")              # a forwardguard DiffusionModel
"""

from __future__ import annotations

import torch

SPEC = "sd15-shaped"
TEXT_LENGTH = 77

VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

UNET_CONFIG = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}

TEXT_CONFIG = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": TEXT_LENGTH,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}

SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "clip_sample": False,
}


def sd15_shaped_components(device: str | torch.device = "cpu", seed: int = 0):
    """SD 1.5-shaped ``DiffusionComponents``, created directly on ``device`` (``meta`` builds no weights).

    Seeds torch's global random generator with ``seed``. Creating the weights on the GPU takes
    seconds; on the CPU the UNet alone takes 3.4 GB and its random initialisation takes a while.
    """
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from forwardguard.models.stable_diffusion import DiffusionComponents
    from forwardguard.models.tiny import _byte_level_vocab

    tokenizer = CLIPTokenizer(vocab=_byte_level_vocab(), merges=[], model_max_length=TEXT_LENGTH)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TEXT_CONFIG,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        vae = AutoencoderKL(**VAE_CONFIG)
        unet = UNet2DConditionModel(**UNET_CONFIG)
        text_encoder = CLIPTextModel(text_config)
    scheduler = PNDMScheduler.from_config(SCHEDULER_CONFIG)
    return DiffusionComponents(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def sd15_shaped_model(device: str | torch.device = "cpu", seed: int = 0):
    """A forwardguard ``DiffusionModel`` of SD 1.5-shaped components with seeded random weights, on ``device``."""
    from forwardguard.models.stable_diffusion import DiffusionModel

    return DiffusionModel(SPEC, sd15_shaped_components(device, seed)).to(device)
