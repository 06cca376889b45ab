"""The edits an adversary runs with a Stable Diffusion model, written to be differentiable.

diffusers' pipelines run under ``torch.no_grad``; the diffusion attack (paper algorithm 2) needs the
gradient of the edited image with respect to the input image through every denoising step. These
functions run the same computation as ``StableDiffusionImg2ImgPipeline`` and
``StableDiffusionInpaintPipeline`` with a DDIM scheduler (the paper's eta=1 sampler) from the model's
own scheduler config, and checkpoint each denoising step so that memory does not grow with the step
count. All random draws (initial noise, DDIM's variance noise) are made before the loop, each image's
from its own generator seeded with the edit's seed: an edit is a deterministic function of its inputs
and its seed, and an image is edited the same alone as in a batch of its size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from forwardguard import interrupt
from forwardguard.models.stable_diffusion import DiffusionModel


@dataclass(frozen=True)
class EditSettings:
    """What the adversary chooses; the paper's appendix A uses guidance 7.5 and eta 1."""

    prompt: str = ""
    strength: float = 0.7
    steps: int = 4
    guidance_scale: float = 7.5
    eta: float = 1.0
    seed: int = 0


def text_embeddings(model: DiffusionModel, prompt: str, batch: int, guided: bool) -> torch.Tensor:
    """The text encoder's context for ``batch`` images; with ``guided``, the unconditional half first."""
    tokenizer = model.tokenizer
    prompts = [prompt] * batch + ([""] * batch if guided else [])
    ids = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids.to(model.device)
    with torch.no_grad():
        embeddings = model.text_encoder(ids)[0]
    if guided:  # diffusers' order: unconditional first
        return torch.cat([embeddings[batch:], embeddings[:batch]])
    return embeddings


def _schedule(model: DiffusionModel, settings: EditSettings):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(model.scheduler.config)
    scheduler.set_timesteps(settings.steps, device=model.device)
    kept = min(int(settings.steps * settings.strength), settings.steps)
    return scheduler, scheduler.timesteps[settings.steps - kept :]


def _denoise(
    model: DiffusionModel,
    latents: torch.Tensor,
    settings: EditSettings,
    scheduler,
    timesteps: torch.Tensor,
    generators: list[torch.Generator],
    extra_channels: torch.Tensor | None = None,
    keep: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The denoising loop, one checkpointed step per timestep.

    ``extra_channels`` are concatenated to the UNet input (the 9-channel inpainting UNet's mask and
    masked-image latents). ``keep = (known_latents, noise, mask)`` re-imposes the known region after
    every step (inpainting with an ordinary 4-channel UNet), as diffusers does.
    """
    guided = settings.guidance_scale > 1
    batch = latents.shape[0]
    context = text_embeddings(model, settings.prompt, batch, guided)
    variance_noise = [_randn(generators, latents) for _ in timesteps]

    def step(latents: torch.Tensor, index: int) -> torch.Tensor:
        t = timesteps[index]
        unet_input = scheduler.scale_model_input(latents, t)
        if extra_channels is not None:
            unet_input = torch.cat([unet_input, extra_channels], dim=1)
        if guided:
            unet_input = torch.cat([unet_input, unet_input])
        noise_pred = model.unet(unet_input, t, encoder_hidden_states=context).sample
        if guided:
            uncond, cond = noise_pred.chunk(2)
            noise_pred = uncond + settings.guidance_scale * (cond - uncond)
        latents = scheduler.step(noise_pred, t, latents, eta=settings.eta, variance_noise=variance_noise[index]).prev_sample
        if keep is not None:
            known, noise, mask = keep
            if index + 1 < len(timesteps):
                known = scheduler.add_noise(known, noise, timesteps[index + 1 : index + 2])
            latents = (1 - mask) * known + mask * latents
        return latents

    for index in range(len(timesteps)):
        interrupt.checkpoint()
        if torch.is_grad_enabled():
            latents = checkpoint(step, latents, index, use_reentrant=False)
        else:
            latents = step(latents, index)
    return latents


def _generators(seed: int, count: int) -> list[torch.Generator]:
    """One generator per image, all seeded ``seed``: image i draws what it would draw alone."""
    return [torch.Generator().manual_seed(seed) for _ in range(count)]


def _randn(generators: list[torch.Generator], like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise shaped like ``like`` (N, ...), image i's part from ``generators[i]``."""
    draws = [torch.randn((1, *like.shape[1:]), generator=generator) for generator in generators]
    return torch.cat(draws).to(like.device)


def img2img(model: DiffusionModel, images: torch.Tensor, settings: EditSettings) -> torch.Tensor:
    """Edit ``images`` (NCHW in [0, 1], sides multiples of ``model.edit_multiple``) towards the prompt."""
    return img2img_latents(model, model.encode(images), settings)


def img2img_latents(model: DiffusionModel, latents: torch.Tensor, settings: EditSettings) -> torch.Tensor:
    """:func:`img2img` from the images' VAE latents (unscaled), for a caller that has encoded them already."""
    scheduler, timesteps = _schedule(model, settings)
    latents = latents * model.latent_scale
    if len(timesteps) > 0:
        generators = _generators(settings.seed, latents.shape[0])
        latents = scheduler.add_noise(latents, _randn(generators, latents), timesteps[:1])
        latents = _denoise(model, latents, settings, scheduler, timesteps, generators)
    return model.decode(latents / model.latent_scale)


def inpaint(model: DiffusionModel, images: torch.Tensor, masks: torch.Tensor, settings: EditSettings) -> torch.Tensor:
    """Repaint the region where ``masks`` (N1HW, 1 = edit) is set, as StableDiffusionInpaintPipeline does.

    A 9-channel inpainting UNet sees the mask and the masked image's latents; an ordinary UNet has the
    known region re-imposed after every step. At strength 1 the edit starts from pure noise.
    """
    scheduler, timesteps = _schedule(model, settings)
    image_latents = model.encode(images) * model.latent_scale
    generators = _generators(settings.seed, image_latents.shape[0])
    noise = _randn(generators, image_latents)
    latent_mask = torch.nn.functional.interpolate(masks, size=image_latents.shape[-2:])
    if settings.strength >= 1:
        latents = noise * scheduler.init_noise_sigma
    else:
        latents = scheduler.add_noise(image_latents, noise, timesteps[:1])
    if model.unet.config.in_channels == 9:
        masked_images = torch.where(masks < 0.5, images, torch.full_like(images, 0.5))  # 0 in the VAE's [-1, 1]
        masked_latents = model.encode(masked_images) * model.latent_scale
        latents = _denoise(
            model,
            latents,
            settings,
            scheduler,
            timesteps,
            generators,
            extra_channels=torch.cat([latent_mask, masked_latents], dim=1),
        )
    else:
        latents = _denoise(model, latents, settings, scheduler, timesteps, generators, keep=(image_latents, noise, latent_mask))
    return model.decode(latents / model.latent_scale)
