"""Control-LoRA (Stability's ``lora_controlnet`` files): a ControlNet assembled from the sampled model's encoder
plus the file's low-rank differences and whole tensors. Sampling with one: test_controlnet.py."""
from __future__ import annotations

import pytest
import torch

import fixtures
from comfyui_core_nodes import controlnet
from comfyui_core_nodes.loading import ModelFileError
from comfyui_core_nodes.sd import load_state_dict_guess_config


@pytest.fixture(scope="module")
def sd1():
    model, _, _, _ = load_state_dict_guess_config(fixtures.checkpoint_state_dict("sd1"))
    return model


def prepared(control: controlnet.ControlBase, model) -> controlnet.ControlBase:
    applied = control.copy().set_cond_hint(fixtures.image(64, 64).movedim(-1, 1), 1.0)
    applied.pre_run(model.model, lambda percent: model.model.model_sampling.percent_to_sigma(percent))
    return applied


def test_control_lora_is_the_model_encoder_plus_the_low_rank_differences(sd1):
    weights = fixtures.control_lora_state_dict()
    control = controlnet.load_controlnet_state_dict(weights, ckpt_name="control-lora.safetensors")
    assert isinstance(control, controlnet.ControlLora)
    applied = prepared(control, sd1)

    unet = sd1.model.diffusion_model.state_dict()
    assembled = applied.control_model.state_dict()
    for key, value in assembled.items():
        stem = key.removesuffix(".weight")
        if key in weights:
            expected = weights[key]
        else:
            up, down = weights[f"{stem}.up"], weights[f"{stem}.down"]
            expected = unet[key] + torch.einsum("or,r...->o...", up.flatten(1), down)
        assert torch.allclose(value, expected, atol=1e-6), key

    # Its residuals feed the UNet like a ControlNet's.
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=generator)
    cond = {"c_crossattn": torch.randn(2, 77, fixtures.TEXT_WIDTH, generator=generator)}
    residuals = applied.get_control(x, torch.full((2,), 3.0), cond, 2, {})
    assert [tuple(r.shape[1:]) for r in residuals["output"]] == [(32, 8, 8), (32, 8, 8), (32, 4, 4), (64, 4, 4)]
    applied.cleanup()
    assert applied.control_model is None


def test_control_lora_for_another_family_is_a_clear_error():
    sdxl, _, _, _ = load_state_dict_guess_config(fixtures.checkpoint_state_dict("sdxl"))
    control = controlnet.load_controlnet_state_dict(fixtures.control_lora_state_dict(), ckpt_name="sd15-control-lora")
    with pytest.raises((ModelFileError, ValueError), match="sd15-control-lora"):
        prepared(control, sdxl)
