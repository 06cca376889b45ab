"""``tiny`` / ``tiny:SEED``: a tiny Stable Diffusion built offline from configs with seeded random weights.

It has every component of the real pipelines (an 8x-downsampling AutoencoderKL, a cross-attention
UNet, a CLIP text encoder and a byte-level CLIP tokenizer made without any download), so every code
path runs on it in seconds. Its weights are random: its edits mean nothing.
"""

from __future__ import annotations

import torch

from forwardguard.models.stable_diffusion import DiffusionComponents, DiffusionModel

TEXT_LENGTH = 16


def _byte_level_vocab() -> dict[str, int]:
    """The CLIP tokenizer's byte-to-unicode alphabet, as words and word ends, plus its special tokens."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    alphabet = [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]
    words = alphabet + [char + "</w>" for char in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    return {word: index for index, word in enumerate(words)}


def tiny_components(seed: int = 0) -> DiffusionComponents:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer(vocab=_byte_level_vocab(), merges=[], model_max_length=TEXT_LENGTH)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 16, 16, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=64,
        )
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=16,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=TEXT_LENGTH,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return DiffusionComponents(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def load_tiny(spec: str) -> DiffusionModel:
    """``tiny`` (seed 0) or ``tiny:SEED``."""
    seed = int(spec.partition(":")[2] or 0)
    return DiffusionModel(spec, tiny_components(seed))
