"""The sampling nodes through the embedded client: on the exact Gaussian denoiser, and on a tiny SD1 checkpoint."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from analytic_model import GaussianDenoiser, TinyPatcher, conditioning
from comfy import hookspecs, paths, paths_plugin
from comfy.client.embedded_comfy_client import Comfy
from comfy.configuration import default_configuration
from comfy.legacy import uninstall_legacy_modules
from comfy.nodes import registry as node_registry_module
from comfy.plugins import create_plugin_manager, set_plugin_manager
from comfyui_samplers import plugin as samplers_plugin
from comfyui_samplers.samplers import SAMPLER_NAMES
from comfyui_samplers.schedulers import SCHEDULER_NAMES


class AnalyticModel:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self):
        return (TinyPatcher(GaussianDenoiser()),)


class MeanConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"mean": ("FLOAT", {"default": 0.0, "min": -10.0, "max": 10.0})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, mean):
        return (conditioning(mean),)


class ZeroLatent:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"size": ("INT", {"default": 16})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, size):
        return ({"samples": torch.zeros(1, 4, size, size)},)


class LatentReport:
    """An output node showing a latent's numbers, so the test reads them from the outputs."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"latent": ("LATENT",)}}

    RETURN_TYPES = ()
    FUNCTION = "report"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def report(self, latent):
        samples = latent["samples"]
        return {"ui": {"mean": [samples.mean().item()], "std": [samples.std().item()],
                       "values": samples.flatten()[:16].tolist()}}


class AnalyticPlugin:
    @hookspecs.hookimpl
    def comfyui_register_nodes(self, register):
        for node in (AnalyticModel, MeanConditioning, ZeroLatent, LatentReport):
            register(node.__name__, node)


def stop_kernel() -> None:
    uninstall_legacy_modules()
    set_plugin_manager(None)
    paths.set_state(None)
    node_registry_module.set_current(None)


@pytest.fixture
def analytic_comfy(tmp_path):
    pm = create_plugin_manager(load_entrypoints=False)
    pm.register(paths_plugin, "local_models")
    pm.register(samplers_plugin, "samplers")
    pm.register(AnalyticPlugin(), "analytic")
    configuration = default_configuration(pm)
    configuration.base_directory = str(tmp_path)
    yield Comfy(configuration, plugin_manager=pm)
    stop_kernel()


def base_prompt() -> dict:
    return {"model": {"class_type": "AnalyticModel", "inputs": {}},
            "pos": {"class_type": "MeanConditioning", "inputs": {"mean": 1.0}},
            "neg": {"class_type": "MeanConditioning", "inputs": {"mean": -1.0}},
            "latent": {"class_type": "ZeroLatent", "inputs": {"size": 16}}}


def ksampler(seed=3, sampler="dpmpp_2m", scheduler="karras", steps=12, cfg=2.0) -> dict:
    prompt = base_prompt()
    prompt["ks"] = {"class_type": "KSampler", "inputs": {
        "model": ["model", 0], "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler,
        "scheduler": scheduler, "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
        "denoise": 1.0}}
    prompt["out"] = {"class_type": "LatentReport", "inputs": {"latent": ["ks", 0]}}
    return prompt


async def test_ksampler_node_samples_and_reports_progress(analytic_comfy):
    async with analytic_comfy as client:
        task = client.queue_with_progress(ksampler())
        progress = [note.data for note in [n async for n in task.progress()] if note.event == "progress"]
        outputs = await task
        again = await client.queue_prompt(ksampler(seed=3, steps=12, cfg=2.0001))
        other = await client.queue_prompt(ksampler(seed=4))
    assert outputs["out"]["mean"][0] == pytest.approx(3.0, abs=0.2)
    assert [entry["value"] for entry in progress if entry["node"] == "ks"] == list(range(1, 13))
    assert again["out"]["values"] == pytest.approx(outputs["out"]["values"], abs=1e-3)
    assert other["out"]["values"] != pytest.approx(outputs["out"]["values"], abs=1e-3)


async def test_ksampler_advanced_steps_chain_like_one_run(analytic_comfy):
    prompt = base_prompt()
    common = {"model": ["model", 0], "noise_seed": 5, "steps": 10, "cfg": 2.0, "sampler_name": "euler",
              "scheduler": "normal", "positive": ["pos", 0], "negative": ["neg", 0]}
    prompt["first"] = {"class_type": "KSamplerAdvanced", "inputs": {
        **common, "add_noise": "enable", "latent_image": ["latent", 0], "start_at_step": 0, "end_at_step": 4,
        "return_with_leftover_noise": "enable"}}
    prompt["second"] = {"class_type": "KSamplerAdvanced", "inputs": {
        **common, "add_noise": "disable", "latent_image": ["first", 0], "start_at_step": 4, "end_at_step": 10000,
        "return_with_leftover_noise": "disable"}}
    prompt["whole"] = {"class_type": "KSamplerAdvanced", "inputs": {
        **common, "add_noise": "enable", "latent_image": ["latent", 0], "start_at_step": 0, "end_at_step": 10000,
        "return_with_leftover_noise": "disable"}}
    prompt["split"] = {"class_type": "LatentReport", "inputs": {"latent": ["second", 0]}}
    prompt["full"] = {"class_type": "LatentReport", "inputs": {"latent": ["whole", 0]}}
    async with analytic_comfy as client:
        outputs = await client.queue_prompt(prompt)
    assert outputs["split"]["values"] == pytest.approx(outputs["full"]["values"], abs=1e-4)


async def test_custom_sampling_nodes(analytic_comfy):
    prompt = base_prompt()
    prompt.update({
        "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}},
        "guider": {"class_type": "CFGGuider", "inputs": {"model": ["model", 0], "positive": ["pos", 0],
                                                          "negative": ["neg", 0], "cfg": 2.0}},
        "sampler": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "dpmpp_2m"}},
        "sigmas": {"class_type": "BasicScheduler", "inputs": {"model": ["model", 0], "scheduler": "karras",
                                                              "steps": 12, "denoise": 1.0}},
        "advanced": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["sampler", 0], "sigmas": ["sigmas", 0],
            "latent_image": ["latent", 0]}},
        "karras": {"class_type": "KarrasScheduler", "inputs": {"steps": 12, "sigma_max": 14.614642,
                                                               "sigma_min": 0.0291675, "rho": 7.0}},
        "custom": {"class_type": "SamplerCustom", "inputs": {
            "model": ["model", 0], "add_noise": True, "noise_seed": 3, "cfg": 2.0, "positive": ["pos", 0],
            "negative": ["neg", 0], "sampler": ["sampler", 0], "sigmas": ["karras", 0],
            "latent_image": ["latent", 0]}},
        "ks": ksampler()["ks"],
        "r_advanced": {"class_type": "LatentReport", "inputs": {"latent": ["advanced", 0]}},
        "r_denoised": {"class_type": "LatentReport", "inputs": {"latent": ["advanced", 1]}},
        "r_custom": {"class_type": "LatentReport", "inputs": {"latent": ["custom", 0]}},
        "r_ks": {"class_type": "LatentReport", "inputs": {"latent": ["ks", 0]}},
    })
    async with analytic_comfy as client:
        outputs = await client.queue_prompt(prompt)
    # The same noise, guidance, sampler and sigmas whichever node runs them.
    assert outputs["r_advanced"]["values"] == pytest.approx(outputs["r_ks"]["values"], abs=1e-5)
    assert outputs["r_custom"]["values"] == pytest.approx(outputs["r_ks"]["values"], abs=1e-3)
    assert outputs["r_denoised"]["mean"][0] == pytest.approx(3.0, abs=0.3)


async def test_split_and_flip_sigmas_and_disabled_noise(analytic_comfy):
    prompt = base_prompt()
    prompt.update({
        "sigmas": {"class_type": "BasicScheduler", "inputs": {"model": ["model", 0], "scheduler": "normal",
                                                              "steps": 8, "denoise": 1.0}},
        "split": {"class_type": "SplitSigmas", "inputs": {"sigmas": ["sigmas", 0], "step": 8}},
        "flip": {"class_type": "FlipSigmas", "inputs": {"sigmas": ["split", 1]}},
        "noise": {"class_type": "DisableNoise", "inputs": {}},
        "guider": {"class_type": "BasicGuider", "inputs": {"model": ["model", 0], "conditioning": ["pos", 0]}},
        "sampler": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "run": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["sampler", 0], "sigmas": ["split", 0],
            "latent_image": ["latent", 0]}},
        "report": {"class_type": "LatentReport", "inputs": {"latent": ["run", 0]}},
    })
    async with analytic_comfy as client:
        outputs = await client.queue_prompt(prompt)
    # No noise and the positive's mean of 1: Euler from an all-zero latent heads straight for 1.
    assert outputs["report"]["std"][0] == pytest.approx(0.0, abs=1e-5)
    assert 0.5 < outputs["report"]["mean"][0] < 1.01


async def test_object_info_has_comfyuis_combos(analytic_comfy):
    async with analytic_comfy as client:
        info = client.runtime.object_info() if hasattr(client.runtime, "object_info") else None
    if info is None:
        from comfyui_samplers.nodes import KSampler

        required = KSampler.INPUT_TYPES()["required"]
    else:
        required = info["KSampler"]["input"]["required"]
    assert list(required["sampler_name"][0]) == SAMPLER_NAMES
    assert list(required["scheduler"][0]) == SCHEDULER_NAMES


# --- a tiny real SD1 checkpoint ---------------------------------------------------------------------

@pytest.fixture
def checkpoint_comfy(tmp_path):
    fixtures = pytest.importorskip("fixtures")
    from comfyui_core_nodes import plugin as core_plugin

    fixtures.write_checkpoint(tmp_path / "models" / "checkpoints" / "tiny_sd1.safetensors", family="sd1")
    pm = create_plugin_manager(load_entrypoints=False)
    pm.register(paths_plugin, "local_models")
    pm.register(core_plugin, "core_nodes")
    pm.register(samplers_plugin, "samplers")
    configuration = default_configuration(pm)
    configuration.base_directory = str(tmp_path)
    configuration.preview_method = "none"
    yield Comfy(configuration, plugin_manager=pm)
    stop_kernel()


def txt2img(seed=1, sampler="euler", scheduler="normal", steps=3, latent=None, denoise=1.0) -> dict:
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd1.safetensors"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a (red:1.2) cube", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["ckpt", 1]}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "ks": {"class_type": "KSampler", "inputs": {
            "model": ["ckpt", 0], "seed": seed, "steps": steps, "cfg": 6.0, "sampler_name": sampler,
            "scheduler": scheduler, "positive": ["pos", 0], "negative": ["neg", 0],
            "latent_image": latent or ["empty", 0], "denoise": denoise}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": f"s{seed}"}},
    }
    return prompt


def saved_pixels(tmp_path, outputs) -> np.ndarray:
    (entry,) = outputs["save"]["images"]
    with Image.open(os.path.join(tmp_path, "output", entry["subfolder"], entry["filename"])) as image:
        return np.array(image)


async def test_tiny_checkpoint_txt2img_img2img_and_inpainting(tmp_path, checkpoint_comfy):
    async with checkpoint_comfy as client:
        first = saved_pixels(tmp_path, await client.queue_prompt(txt2img(seed=1)))
        again = saved_pixels(tmp_path, await client.queue_prompt(txt2img(seed=1)))
        other = saved_pixels(tmp_path, await client.queue_prompt(txt2img(seed=2)))
        assert first.shape == (64, 64, 3)
        assert np.array_equal(first, again) and not np.array_equal(first, other)

        image2image = txt2img(seed=3, denoise=0.5, latent=["encode", 0])
        image2image["source"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                                         "color": 0x808080}}
        image2image["encode"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["source", 0], "vae": ["ckpt", 2]}}
        assert saved_pixels(tmp_path, await client.queue_prompt(image2image)).shape == (64, 64, 3)

        inpaint = txt2img(seed=4, latent=["masked", 0], sampler="dpmpp_2m", scheduler="karras")
        inpaint["source"] = image2image["source"]
        inpaint["encode"] = image2image["encode"]
        inpaint["mask"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 32, "height": 64}}
        inpaint["masked"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["encode", 0],
                                                                            "mask": ["mask", 0]}}
        assert saved_pixels(tmp_path, await client.queue_prompt(inpaint)).shape == (64, 64, 3)


@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "uni_pc", "lms", "ddim"])
async def test_tiny_checkpoint_runs_other_samplers(tmp_path, checkpoint_comfy, sampler):
    async with checkpoint_comfy as client:
        pixels = saved_pixels(tmp_path, await client.queue_prompt(txt2img(sampler=sampler, scheduler="karras")))
    assert pixels.shape == (64, 64, 3)
