"""Optional UNet planting (config ``unet_lora``): diffusion-attack patterns planted into the UNet through LoRA.

A diffusion-attack pattern was made against the whole edit f (paper algorithm 2), not only the image
encoder. With ``unet_lora`` set on a Stable Diffusion base, a LoRA (peft) on the UNet trains together
with the encoder, on two more loss terms:

- ``unet_edit``: ||f_new(T(x_imm)) - gray||^2 (mean over pixels), f_new the pattern's own img2img edit
  (prompt, strength, guidance, eta and seed from its record) cut to at most ``edit_steps`` denoising steps
  (:func:`short_edit`), run by the new encoder, the LoRA UNet and the frozen decoder; differentiable, one
  checkpoint per step;
- ``unet_utility``: the LoRA UNet's noise prediction on noised clean latents stays the base UNet's (the
  same UNet with its adapters disabled): relative MSE, under the snapshot's prompts and the empty one.

Why one module: an edit calls the UNet once per denoising step and the utility term calls it twice
more, so the UNet cannot get a single forward per step. The encoder and the UNet are therefore
prepared as ONE module, :class:`LoRAStudent`, whose forward does the whole step's work: DDP sees
exactly one forward per backward (the UNet calls are plain calls inside it, and the utility term uses
every LoRA weight every step, so no trained parameter goes unused), and DeepSpeed, which takes one
model per accelerator, gets one.

The written UNet has the LoRA merged into its weights: a plain diffusers UNet.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from forwardguard.errors import ForwardguardError
from forwardguard.finetune.config import UNetLoRA
from forwardguard.finetune.data import sample_generator
from forwardguard.measures import GRAY, relative_mse
from forwardguard.models.base import ImageModel
from forwardguard.models.edits import EditSettings, img2img_latents, text_embeddings
from forwardguard.models.stable_diffusion import DiffusionModel

UTILITY_SEED_OFFSET = 4  # the planting recipe's streams use seed + 0..3 and 5..7


def add_lora(unet: Any, settings: UNetLoRA, seed: int = 0) -> None:
    """Inject a LoRA adapter (peft, through diffusers' integration); only its weights are trainable.

    Its random initial weights are drawn from ``seed``, so that a run, a resumed run and a data-parallel
    run all start from the same LoRA."""
    from peft import LoraConfig

    # peft annotates lora_alpha as int; a float works (it is only divided by r)
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, target_modules=list(settings.target_modules))  # type: ignore[arg-type]
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet.add_adapter(config)
    except ValueError as error:
        reason = str(error).strip().splitlines()[0]
        raise ForwardguardError(f"plant config: unet_lora.target_modules {list(settings.target_modules)}: {reason}") from None


def load_planted(model: DiffusionModel, state: Mapping[str, torch.Tensor], settings: UNetLoRA) -> None:
    """Load a trained :class:`LoRAStudent` state dict into a freshly loaded base: the encoder's weights, and
    the LoRA merged into the UNet (which then has the base's own keys, nothing of peft left)."""
    parts: dict[str, dict[str, torch.Tensor]] = {"encoder": {}, "unet": {}}
    for key, value in state.items():
        part, _, name = key.partition(".")
        parts[part][name] = value
    model.latent_encoder.load_state_dict(parts["encoder"])
    add_lora(model.unet, settings)
    model.unet.load_state_dict(parts["unet"])
    model.unet.fuse_lora()
    model.unet.unload_lora()


def short_edit(edit: EditSettings, edit_steps: int) -> EditSettings:
    """The edit planting runs for a pattern: its own when it makes at most ``edit_steps`` denoising steps;
    otherwise the same edit on the coarsest DDIM schedule that makes exactly ``edit_steps`` denoising steps at
    the same strength, so that it starts from about the same noise level (img2img makes
    ``int(steps * strength)`` denoising steps, from ``strength`` of the way to pure noise)."""
    if int(edit.steps * edit.strength) <= edit_steps:
        return edit
    steps = edit_steps
    while int(steps * edit.strength) < edit_steps:
        steps += 1
    return replace(edit, steps=steps)


def pattern_edits(records: Iterable, edit_steps: int) -> dict[str, EditSettings]:  # Iterable[PatternRecord]
    """The short edit of every diffusion-attack pattern, by pattern id, from its record's edit settings.

    The registry keeps no inpainting masks, so every pattern's edit is img2img."""
    edits = {}
    for record in records:
        if record.method != "diffusion":
            continue
        params = record.params.get("edit")
        try:
            edits[record.id] = short_edit(EditSettings(**params), edit_steps)
        except TypeError:
            raise ForwardguardError(
                f"pattern {record.id[:12]}: its parameters hold no valid edit settings (params['edit'] = {params!r})"
            ) from None
    return edits


@dataclass(frozen=True)
class LoRAInputs:
    """The UNet terms' inputs of one step, besides the student's image batch."""

    edits: tuple[tuple[int, EditSettings], ...]  # (row of the image batch, that pattern's short edit)
    noisy_latents: torch.Tensor  # noised, scaled clean latents of the base
    timesteps: torch.Tensor
    context: torch.Tensor  # text embeddings, one per clean latent


class LoRAStudent(nn.Module):
    """The latent encoder and the LoRA UNet as one trained module (see the module docstring for why).

    ``forward(images, inputs, large)`` returns (latents of images, latents of the large crops or None,
    edited images (E, 3, H, W), the LoRA UNet's noise predictions, the base UNet's), the last without
    gradient.
    """

    def __init__(self, model: DiffusionModel) -> None:
        super().__init__()
        self.encoder = model.latent_encoder
        self.unet = model.unet
        self.model = model  # not an nn.Module: the text encoder, scheduler and decoder the edit uses, unregistered

    def forward(
        self, images: torch.Tensor, inputs: LoRAInputs, large: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
        latents = self.encoder(images)
        large_latents = None if large is None else self.encoder(large)
        edited = [img2img_latents(self.model, latents[row : row + 1], settings) for row, settings in inputs.edits]
        edited_batch = torch.cat(edited) if edited else images.new_zeros((0, *images.shape[1:]))
        unet_inputs = (inputs.noisy_latents, inputs.timesteps)
        with torch.no_grad():
            self.unet.disable_adapters()
            try:
                base = self.unet(*unet_inputs, encoder_hidden_states=inputs.context).sample
            finally:
                self.unet.enable_adapters()
        prediction = self.unet(*unet_inputs, encoder_hidden_states=inputs.context).sample
        return latents, large_latents, edited_batch, prediction, base


class LoRAPlanting:
    """Sets the base's UNet up with LoRA and gives the trainer the UNet terms' inputs and losses.

    Raises ForwardguardError for a base that is not Stable Diffusion, a snapshot without diffusion-attack
    patterns, a diffusion pattern without edit settings, and target modules the UNet does not have.
    """

    def __init__(self, model: ImageModel, records: Iterable, settings: UNetLoRA, seed: int) -> None:
        from diffusers import DDIMScheduler

        if not isinstance(model, DiffusionModel):
            raise ForwardguardError(
                f"unet_lora plants into a Stable Diffusion UNet; {model.spec!r} is an autoencoder without one"
                " (remove unet_lora from the plant config)"
            )
        self.edits = pattern_edits(records, settings.edit_steps)
        if not self.edits:
            raise ForwardguardError(
                "unet_lora is set but the snapshot holds no diffusion-attack patterns: nothing for the UNet to plant"
            )
        add_lora(model.unet, settings, seed)
        self.seed = seed
        self.latent_scale = model.latent_scale
        self.noise_scheduler = DDIMScheduler.from_config(model.scheduler.config)
        prompts = sorted({""} | {edit.prompt for edit in self.edits.values()})
        self.contexts = torch.cat([text_embeddings(model, prompt, 1, guided=False) for prompt in prompts])

    def inputs(
        self, pattern_ids: Sequence[str], first_row: int, clean_latents: torch.Tensor, positions: Iterable[int]
    ) -> LoRAInputs:
        """Edits for the diffusion patterns among ``pattern_ids`` (image rows from ``first_row`` on), and the
        utility inputs for the base's ``clean_latents``: noise, timestep and prompt drawn from each sample's
        position in the clean stream, so that they shard and resume like the data."""
        edits = tuple((first_row + i, self.edits[pid]) for i, pid in enumerate(pattern_ids) if pid in self.edits)
        noise, timesteps, prompts = [], [], []
        train_steps = self.noise_scheduler.config.num_train_timesteps
        for position in positions:
            generator = sample_generator(self.seed + UTILITY_SEED_OFFSET, position)
            noise.append(torch.randn(clean_latents.shape[1:], generator=generator))
            timesteps.append(int(torch.randint(train_steps, (1,), generator=generator)))
            prompts.append(int(torch.randint(len(self.contexts), (1,), generator=generator)))
        device = clean_latents.device
        timestep_batch = torch.tensor(timesteps, device=device)
        noisy = self.noise_scheduler.add_noise(
            clean_latents.float() * self.latent_scale, torch.stack(noise).to(device), timestep_batch
        )
        return LoRAInputs(edits=edits, noisy_latents=noisy, timesteps=timestep_batch, context=self.contexts[prompts])

    def losses(self, edited: torch.Tensor, prediction: torch.Tensor, base: torch.Tensor) -> dict[str, torch.Tensor]:
        """unet_edit: mean squared distance of the edits to gray (0 at a step that drew no diffusion pattern);
        unet_utility: relative MSE of the LoRA UNet's noise prediction to the base UNet's."""
        per_edit = (edited.float() - GRAY).pow(2).flatten(1).mean(dim=1)
        return {
            "unet_edit": per_edit.mean() if len(per_edit) else per_edit.sum(),
            "unet_utility": relative_mse(prediction, base).mean(),
        }
