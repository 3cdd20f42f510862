"""Architecture detection: the real files' keys (built on the meta device) and tiny checkpoints."""
from __future__ import annotations

import pytest
import torch

import fixtures
from comfyui_core_nodes import detection
from comfyui_core_nodes.controlnet import ControlNetModel
from comfyui_core_nodes.loading import ModelFileError, without_ldm_extras
from comfyui_core_nodes.model_base import ModelType, create_model
from comfyui_core_nodes.sd import CheckpointError, load_diffusion_model_state_dict, load_state_dict_guess_config
from comfyui_core_nodes.vae import AutoencoderKL, vae_config_from_state_dict

UNET = "model.diffusion_model."

MANIFEST_FAMILIES = [
    ("sd15", "sd1", 4, 768, None),
    ("sd15_inpainting", "sd1", 9, 768, None),
    ("sd21_768v", "sd2", 4, 1024, None),
    ("sdxl_base", "sdxl", 4, 2048, 2816),
    ("sdxl_refiner", "sdxl_refiner", 4, 1280, 2560),
]


@pytest.mark.parametrize("manifest, family, in_channels, context_dim, adm", MANIFEST_FAMILIES)
def test_released_unet_is_detected_and_loads_exactly_its_keys(manifest, family, in_channels, context_dim, adm):
    sd = fixtures.manifest_state_dict(manifest)
    assert detection.find_unet_prefix(sd) == UNET
    config = detection.model_config_for(sd, UNET)
    assert (config.family, config.unet.in_channels, config.unet.context_dim, config.unet.adm_in_channels) == (
        family, in_channels, context_dim, adm)
    assert config.inpaint_model() == (in_channels == 9)
    model = create_model(config, device=torch.device("meta"))
    unet = fixtures.manifest_state_dict(manifest, UNET)
    # strict: every key of the file is one of ours and every one of ours is in the file, shapes equal.
    model.diffusion_model.load_state_dict(unet, strict=True, assign=True)


def test_released_heads_follow_each_family():
    sd15 = detection.model_config_for(fixtures.manifest_state_dict("sd15"), UNET).unet
    sdxl = detection.model_config_for(fixtures.manifest_state_dict("sdxl_base"), UNET).unet
    assert sd15.heads_for(320) == (8, 40) and sd15.heads_for(1280) == (8, 160)
    assert sdxl.heads_for(640) == (10, 64) and sdxl.heads_for(1280) == (20, 64)


@pytest.mark.parametrize("manifest", ["sd15", "sd21_768v"])
def test_ldm_training_buffers_are_ignored(manifest):
    sd = {**fixtures.manifest_state_dict(manifest), **fixtures.manifest_state_dict("ldm_extras")}
    cleaned = without_ldm_extras(sd)
    assert set(sd) - set(cleaned) == set(key for key, _ in fixtures.manifest("ldm_extras"))
    assert detection.model_config_for(cleaned, UNET).family == ("sd1" if manifest == "sd15" else "sd2")


@pytest.mark.parametrize("manifest, prefix", [("vae_sd", ""), ("sd15", "first_stage_model."),
                                              ("sdxl_base", "first_stage_model.")])
def test_released_vae_loads_exactly_its_keys(manifest, prefix):
    sd = fixtures.manifest_state_dict(manifest, prefix)
    config = vae_config_from_state_dict(sd)
    assert (config.ch, config.ch_mult, config.num_res_blocks, config.z_channels, config.downscale_ratio) == (
        128, [1, 2, 4, 4], 2, 4, 8)
    with torch.device("meta"):
        vae = AutoencoderKL(config)
    vae.load_state_dict({key: value for key, value in sd.items() if key.startswith(("encoder.", "decoder.", "quant",
                                                                                   "post_quant"))},
                        strict=True, assign=True)


def test_released_controlnet_loads_exactly_its_keys():
    sd = fixtures.manifest_state_dict("controlnet_sd15", "control_model.")
    config = detection.model_config_for(sd)
    assert config.family == "sd1"
    with torch.device("meta"):
        control = ControlNetModel(config.unet, hint_channels=sd["input_hint_block.0.weight"].shape[1])
    control.load_state_dict(sd, strict=True, assign=True)


@pytest.mark.parametrize("family, model_class", [("sd1", "BaseModel"), ("sd2", "BaseModel"), ("sdxl", "SDXL"),
                                                 ("sdxl_refiner", "SDXLRefiner"), ("sd2_unclip", "SD21UNCLIP")])
def test_tiny_checkpoints_are_detected_like_released_ones(family, model_class):
    model, clip, vae, _ = load_state_dict_guess_config(fixtures.checkpoint_state_dict(family), ckpt_name="tiny")
    assert model.model.model_config.family == family
    assert type(model.model).__name__ == model_class
    assert clip is not None and vae is not None
    assert model.model.model_type == ModelType.EPS


def test_inpainting_and_v_prediction_are_read_from_the_file():
    inpaint, _, _, _ = load_state_dict_guess_config(fixtures.checkpoint_state_dict("sd1", inpaint=True))
    assert inpaint.model.concat_keys == ("mask", "masked_image")
    v_pred, _, _, _ = load_state_dict_guess_config(fixtures.checkpoint_state_dict("sd2", v_prediction=True))
    assert v_pred.model.model_type == ModelType.V_PREDICTION
    sigma = torch.tensor([2.0])
    # v-prediction's denoised is x / (sigma^2 + 1) - v * sigma / sqrt(sigma^2 + 1).
    denoised = v_pred.model.model_sampling.calculate_denoised(sigma, torch.ones(1, 4, 2, 2), torch.ones(1, 4, 2, 2))
    assert torch.allclose(denoised, torch.full((1, 4, 2, 2), 1 / 5 - 2 / 5 ** 0.5))


def test_unknown_files_name_what_was_found():
    with pytest.raises(CheckpointError, match=r"no UNet.*looks like a VAE \(use VAELoader\).*decoder\.up"):
        load_state_dict_guess_config(fixtures.vae_state_dict(prefix=""), ckpt_name="my_vae.safetensors")
    # An ADM-conditioned UNet with two levels is neither SDXL base nor refiner.
    odd = fixtures.unet_state_dict("sdxl", prefix="")
    odd = {key: value for key, value in odd.items() if not key.startswith(("input_blocks.4", "input_blocks.5",
                                                                            "input_blocks.8"))}
    with pytest.raises(CheckpointError, match=r"odd\.safetensors: unrecognised UNet.*adm_in_channels=1568"):
        load_diffusion_model_state_dict(odd, name="odd.safetensors")
    diffusers = {"conv_in.weight": torch.zeros(4, 4, 3, 3), "down_blocks.0.resnets.0.conv1.weight": torch.zeros(1)}
    with pytest.raises(ModelFileError, match="unet: a diffusers UNet whose decoder .* does not mirror"):
        load_diffusion_model_state_dict(diffusers, name="unet")
