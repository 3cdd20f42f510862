"""ControlNet, Control-LoRA and T2I-Adapter: loading the original layouts, residual shapes, chaining, and sampling with them."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

import fixtures
from comfy.transport import PromptExecutionError
from comfyui_core_nodes import controlnet
from comfyui_core_nodes.sd import load_state_dict_guess_config


@pytest.fixture(scope="module")
def sd1():
    model, clip, vae, _ = load_state_dict_guess_config(fixtures.checkpoint_state_dict("sd1"))
    return model


def control_inputs(model, batch: int = 2):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, 8, 8, generator=generator)
    sigma = torch.full((batch,), 3.0)
    cond = {"c_crossattn": torch.randn(batch, 77, fixtures.TEXT_WIDTH, generator=generator)}
    return x, sigma, cond


def test_controlnet_residuals_match_the_unet_blocks(sd1):
    control = controlnet.load_controlnet_state_dict(fixtures.controlnet_state_dict("sd1"), ckpt_name="tiny")
    assert isinstance(control, controlnet.ControlNet)
    hint = fixtures.image(64, 64).movedim(-1, 1)
    applied = control.copy().set_cond_hint(hint, 0.5, (0.0, 1.0))
    applied.pre_run(sd1.model, lambda percent: sd1.model.model_sampling.percent_to_sigma(percent))
    x, sigma, cond = control_inputs(sd1)
    residuals = applied.get_control(x, sigma, cond, 2, {})
    unet = sd1.model.diffusion_model
    assert len(residuals["output"]) == len(unet.input_blocks) and len(residuals["middle"]) == 1
    assert [tuple(r.shape[1:]) for r in residuals["output"]] == [(32, 8, 8), (32, 8, 8), (32, 4, 4), (64, 4, 4)]

    # A chained ControlNet adds its residuals to the previous one's.
    chained = control.copy().set_cond_hint(hint, 0.25).set_previous_controlnet(applied)
    chained.pre_run(sd1.model, lambda percent: sd1.model.model_sampling.percent_to_sigma(percent))
    alone = control.copy().set_cond_hint(hint, 0.25)
    alone.pre_run(sd1.model, lambda percent: sd1.model.model_sampling.percent_to_sigma(percent))
    both = chained.get_control(x, sigma, cond, 2, {})
    expected = [a + b for a, b in zip(applied.get_control(x, sigma, cond, 2, {})["output"],
                                      alone.get_control(x, sigma, cond, 2, {})["output"])]
    assert all(torch.allclose(got, want, atol=1e-5) for got, want in zip(both["output"], expected))

    # Outside its percent range a control gives nothing (or its predecessor's residuals).
    late = control.copy().set_cond_hint(hint, 1.0, (0.5, 1.0))
    late.pre_run(sd1.model, lambda percent: sd1.model.model_sampling.percent_to_sigma(percent))
    assert late.get_control(x, torch.full((2,), 14.0), cond, 2, {}) is None

    # The UNet takes them, leaving the caller's lists whole.
    before = [tensor.clone() for tensor in residuals["output"]]
    out = sd1.model.apply_model(x, sigma, c_crossattn=cond["c_crossattn"], control=residuals)
    plain = sd1.model.apply_model(x, sigma, c_crossattn=cond["c_crossattn"])
    assert not torch.allclose(out, plain) and len(residuals["output"]) == len(before)


def test_diff_controlnet_adds_the_model_weights(sd1):
    full = fixtures.controlnet_state_dict("sd1")
    model_sd = sd1.model_state_dict()
    diff = {key: value - model_sd[f"diffusion_model.{key[len('control_model.'):]}"]
            if f"diffusion_model.{key[len('control_model.'):]}" in model_sd else value for key, value in full.items()}
    diff["difference"] = torch.tensor([])
    from_diff = controlnet.load_controlnet_state_dict(diff, model=sd1)
    from_full = controlnet.load_controlnet_state_dict(full)
    for key, value in from_full.control_model.state_dict().items():
        assert torch.allclose(from_diff.control_model.state_dict()[key], value, atol=1e-6), key


def test_t2i_adapter_features_fit_the_unet():
    model, _, _, _ = load_state_dict_guess_config(fixtures.checkpoint_state_dict("sd1_four_levels"))
    adapter = controlnet.load_controlnet_state_dict(fixtures.t2i_adapter_state_dict())
    assert isinstance(adapter, controlnet.T2IAdapter) and adapter.channels_in == 3
    applied = adapter.copy().set_cond_hint(fixtures.image(64, 64).movedim(-1, 1), 1.0)
    applied.pre_run(model.model, lambda percent: model.model.model_sampling.percent_to_sigma(percent))
    x, sigma, cond = control_inputs(model)
    residuals = applied.get_control(x, sigma, cond, 2, {})
    assert len(residuals["input"]) == len(model.model.diffusion_model.input_blocks)
    out = model.model.apply_model(x, sigma, c_crossattn=cond["c_crossattn"], control=residuals)
    assert not torch.allclose(out, model.model.apply_model(x, sigma, c_crossattn=cond["c_crossattn"]))


def test_files_that_are_not_controls_are_refused():
    with pytest.raises(controlnet.ModelFileError, match="not a ControlNet.*nor a T2I-Adapter"):
        controlnet.load_controlnet_state_dict(fixtures.vae_state_dict(prefix=""), ckpt_name="vae.safetensors")


def sampling_prompt(checkpoint: str, control: str | None, strength: float = 1.0, seed: int = 7) -> dict:
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cube", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "hint": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0xff0000}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "ks": {"class_type": "KSampler", "inputs": {"model": ["ckpt", 0], "seed": seed, "steps": 3, "cfg": 4.0,
                                                    "sampler_name": "euler", "scheduler": "normal",
                                                    "positive": ["pos", 0], "negative": ["neg", 0],
                                                    "latent_image": ["empty", 0], "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "cn"}},
    }
    if control is not None:
        prompt["cn"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": control}}
        prompt["apply"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["pos", 0], "negative": ["neg", 0], "control_net": ["cn", 0], "image": ["hint", 0],
            "strength": strength, "start_percent": 0.0, "end_percent": 1.0}}
        prompt["ks"]["inputs"].update(positive=["apply", 0], negative=["apply", 1])
    return prompt


async def test_sampling_with_a_controlnet_and_a_t2i_adapter(tmp_path):
    fixtures.write_checkpoint(fixtures.models_folder(tmp_path) / "sd1.safetensors", "sd1")
    fixtures.write_checkpoint(fixtures.models_folder(tmp_path) / "sd1_four.safetensors", "sd1_four_levels")
    folder = fixtures.models_folder(tmp_path, "controlnet")
    fixtures.save_state_dict(fixtures.controlnet_state_dict("sd1"), folder / "control_v11p_tiny.pth")
    fixtures.save_state_dict(fixtures.t2i_adapter_state_dict(), folder / "t2iadapter_tiny.safetensors")
    fixtures.save_state_dict(fixtures.control_lora_state_dict("sd1"), folder / "control-lora-tiny.safetensors")

    def pixels(outputs: dict) -> np.ndarray:
        (entry,) = outputs["save"]["images"]
        with Image.open(os.path.join(tmp_path, "output", entry["subfolder"], entry["filename"])) as image:
            return np.array(image)

    try:
        async with fixtures.core_comfy(tmp_path) as client:
            plain = pixels(await client.queue_prompt(sampling_prompt("sd1.safetensors", None)))
            controlled = pixels(await client.queue_prompt(sampling_prompt("sd1.safetensors", "control_v11p_tiny.pth")))
            off = pixels(await client.queue_prompt(sampling_prompt("sd1.safetensors", "control_v11p_tiny.pth", 0.0)))
            control_lora = pixels(await client.queue_prompt(sampling_prompt("sd1.safetensors",
                                                                            "control-lora-tiny.safetensors")))
            adapter_plain = pixels(await client.queue_prompt(sampling_prompt("sd1_four.safetensors", None)))
            adapted = pixels(await client.queue_prompt(sampling_prompt("sd1_four.safetensors",
                                                                       "t2iadapter_tiny.safetensors")))
            fixtures.write_checkpoint(fixtures.models_folder(tmp_path) / "xl.safetensors", "sdxl")
            with pytest.raises(PromptExecutionError, match="This ControlNet is for Stable Diffusion 1.x models, but "
                                                           "the model being sampled is SDXL base"):
                await client.queue_prompt(sampling_prompt("xl.safetensors", "control_v11p_tiny.pth"))
    finally:
        fixtures.stop_kernel()
    assert not np.array_equal(plain, controlled) and np.array_equal(plain, off)
    assert not np.array_equal(plain, control_lora) and not np.array_equal(controlled, control_lora)
    assert not np.array_equal(adapter_plain, adapted)
