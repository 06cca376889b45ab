"""``eval --inception --clip``: FID, precision/recall and CLIP similarity from local (here random) weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from planting_support import record_immunized

from forwardguard.errors import ForwardguardError
from forwardguard.eval.distribution import set_distance
from forwardguard.eval.report import FEW_IMAGES, NOT_COMPUTED, not_computed
from forwardguard.eval.run import run_eval
from forwardguard.eval.schema import Cell
from forwardguard.eval.settings import EvalRequest, EvalSettings, ModelArg
from forwardguard.immunize import AttackSettings
from forwardguard.registry import Registry

EDITS = ("img2img", "inpaint")


@pytest.fixture(scope="module")
def tiny_registry(tmp_path_factory, tiny, photo) -> Path:
    path = tmp_path_factory.mktemp("distribution-registry") / "reg.db"
    with Registry.open(path, create=True) as registry:
        record_immunized(registry, tiny, [photo("astronaut", (32, 32)), photo("coffee", (32, 32))], AttackSettings(steps=2))
        registry.create_snapshot("tiny-v1")
    return path


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory) -> Path:
    from torchvision.models import inception_v3

    path = tmp_path_factory.mktemp("inception") / "inception.pth"
    torch.manual_seed(0)
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory, tiny) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = tiny.tokenizer  # byte-level, built offline
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={**small, **special, "vocab_size": len(tokenizer), "max_position_embeddings": tokenizer.model_max_length},
        vision_config={**small, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clip")
    CLIPModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def request(registry: Path, out: Path, **weights: Path) -> EvalRequest:
    return EvalRequest(
        registry=str(registry),
        models=(ModelArg("v1", "tiny"),),
        out=out,
        snapshots=("tiny-v1",),
        settings=EvalSettings(edit_steps=2, max_images=2),
        **weights,
    )


def test_every_distribution_metric_is_computed_when_weights_are_given(tiny_registry, inception_file, clip_folder, tmp_path):
    report = json.loads(
        run_eval(request(tiny_registry, tmp_path / "out", inception=inception_file, clip=clip_folder)).read_text()
    )
    assert report["not_computed"] == {}
    [cell] = report["cells"]
    assert set(cell["distribution"]) == set(EDITS)
    for by_version in cell["distribution"].values():
        assert set(by_version) == {"immunized", "noise", "clean"}
        for version in ("immunized", "noise"):
            numbers = by_version[version]
            assert set(numbers) == {"fid", "precision", "recall", "clip_similarity"}
            assert math.isfinite(numbers["fid"]) and numbers["fid"] >= -1e-6  # random Inception weights: near 0
            assert 0 <= numbers["precision"] <= 1 and 0 <= numbers["recall"] <= 1
        for numbers in by_version.values():
            similarity = numbers["clip_similarity"]
            assert similarity["n"] == 2 and -1 <= similarity["mean"] <= 1


def test_without_weights_nothing_is_a_number(tiny_registry, clip_folder, tmp_path):
    report = json.loads(run_eval(request(tiny_registry, tmp_path / "out", clip=clip_folder)).read_text())
    assert report["not_computed"] == {"fid": NOT_COMPUTED["fid"], "precision_recall": NOT_COMPUTED["precision_recall"]}
    [cell] = report["cells"]
    for by_version in cell["distribution"].values():
        assert set(by_version["immunized"]) == {"clip_similarity"}
    assert not_computed([Cell.model_validate(cell)], inception=True, clip=True) == {
        "fid": FEW_IMAGES,
        "precision_recall": FEW_IMAGES,
    }
    assert not_computed([], inception=False, clip=False) == NOT_COMPUTED


def test_a_bad_weights_file_is_refused_before_any_work(tiny_registry, tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    out = tmp_path / "out"
    for path, reason in (
        (garbage, "cannot read"),
        (wrong, "not a state dict of torchvision's inception_v3"),
        (tmp_path / "none.pth", "no such file"),
    ):
        with pytest.raises(ForwardguardError, match=f"--inception {path}: {reason}"):
            run_eval(request(tiny_registry, out, inception=path))
    with pytest.raises(ForwardguardError, match=f"--clip {tmp_path}: not a CLIP model folder"):
        run_eval(request(tiny_registry, out, clip=tmp_path))
    assert not out.exists()


def test_the_projection_keeps_fid_and_precision_recall_exact():
    import piq

    generator = torch.Generator().manual_seed(0)
    edited, clean = (
        torch.randn(5, 64, generator=generator, dtype=torch.float64),
        torch.randn(6, 64, generator=generator, dtype=torch.float64),
    )
    numbers = set_distance(edited + 0.5, clean)
    precision, recall = piq.PR(nearest_k=4)(clean, edited + 0.5)
    assert numbers["fid"] == pytest.approx(float(piq.FID()(edited + 0.5, clean)), rel=1e-4)
    assert (numbers["precision"], numbers["recall"]) == (float(precision), float(recall))
