"""InpaintModelConditioning, Differential Diffusion and FreeU (v1 and v2): what each does to its inputs, and
whole inpainting workflows with them through the embedded client."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import fixtures
from comfyui_core_nodes.model_sampling import model_sampling
from comfyui_core_nodes.nodes_conditioning import InpaintModelConditioning
from comfyui_core_nodes.nodes_model import FreeU, FreeU_V2, differential_mask
from comfyui_core_nodes.sd import load_state_dict_guess_config


@pytest.fixture(scope="module")
def inpaint_checkpoint():
    model, clip, vae, _ = load_state_dict_guess_config(fixtures.checkpoint_state_dict("sd1", inpaint=True))
    return model, clip, vae


def test_inpaint_model_conditioning_greys_the_masked_pixels_for_the_model(inpaint_checkpoint):
    _, _, vae = inpaint_checkpoint
    pixels = fixtures.image(70, 66)
    mask = torch.zeros(1, 70, 66)
    mask[:, 20:50, 10:40] = 1.0
    positive, negative = [[torch.zeros(1, 77, 32), {}]], [[torch.ones(1, 77, 32), {"strength": 2.0}]]
    new_positive, new_negative, latent = InpaintModelConditioning().encode(positive, negative, pixels, vae, mask)

    # The image is centre-cropped to multiples of 8 (64x64, from row 3 and column 1) for the masked latent ...
    cropped = pixels[:, 3:67, 1:65].clone()
    cropped_mask = mask[:, None, 3:67, 1:65]
    cropped[0][cropped_mask[0, 0] > 0.5] = 0.5
    expected_masked = vae.encode(cropped)
    for conditioning in (new_positive, new_negative):
        assert torch.equal(conditioning[0][1]["concat_latent_image"], expected_masked)
        assert torch.equal(conditioning[0][1]["concat_mask"], cropped_mask)
    assert new_negative[0][1]["strength"] == 2.0 and positive[0][1] == {}
    # ... while the latent to sample is the whole image's, with the mask to keep the rest.
    assert torch.equal(latent["samples"], vae.encode(pixels))
    assert torch.equal(latent["noise_mask"], cropped_mask)
    assert "noise_mask" not in InpaintModelConditioning().encode(positive, negative, pixels, vae, mask, False)[2]


def test_differential_diffusion_mask_follows_the_run():
    sampling = model_sampling("eps")
    sigmas = torch.tensor([14.6, 6.0, 2.0, 0.5, 0.0])
    guider = type("Guider", (), {"inner_model": type("Model", (), {"model_sampling": sampling})()})()
    options = {"model": guider, "sigmas": sigmas}
    soft = torch.linspace(0, 1, 11).reshape(1, 1, 1, 11)
    # At the first step only the fully masked pixels change; at the last one every pixel with a mask above 0 does.
    first = differential_mask(sigmas[:1], soft, options, strength=1.0)
    last = differential_mask(torch.tensor([sampling.sigma_min]), soft, options, strength=1.0)
    assert first.flatten().tolist() == [0.0] * 10 + [1.0]
    assert last.flatten().tolist() == [1.0] * 11
    middle = differential_mask(sigmas[2:3], soft, options, strength=1.0).flatten()
    assert 0 < middle.sum() < 11 and torch.equal(middle, middle.sort().values)
    half = differential_mask(sigmas[2:3], soft, options, strength=0.5)
    assert torch.allclose(half, 0.5 * middle.reshape(soft.shape) + 0.5 * soft)


@pytest.mark.parametrize("node, adaptive", [(FreeU, False), (FreeU_V2, True)])
def test_freeu_scales_half_the_backbone_and_filters_the_skip(inpaint_checkpoint, node, adaptive):
    model, _, _ = inpaint_checkpoint
    (patched,) = node().patch(model, b1=1.5, b2=1.2, s1=0.5, s2=0.2)
    (patch,) = patched.model_options["transformer_options"]["patches"]["output_block_patch"]
    channels = model.model.model_config.unet_config["model_channels"] * 4
    generator = torch.Generator().manual_seed(0)
    h, hsp = torch.randn(1, channels, 4, 4, generator=generator), torch.randn(1, channels, 4, 4, generator=generator)
    new_h, new_hsp = patch(h.clone(), hsp.clone(), {})
    half = channels // 2
    assert torch.equal(new_h[:, half:], h[:, half:])
    if adaptive:
        mean = h.mean(1, keepdim=True)
        mean = (mean - mean.amin()) / (mean.amax() - mean.amin())
        assert torch.allclose(new_h[:, :half], h[:, :half] * (0.5 * mean + 1))
    else:
        assert torch.allclose(new_h[:, :half], h[:, :half] * 1.5)
    # The skip's lowest frequencies are damped by s1; its mean (the DC term) is scaled exactly.
    assert torch.allclose(new_hsp.mean(dim=(2, 3)), 0.5 * hsp.mean(dim=(2, 3)), atol=1e-5)
    # Other widths pass unchanged; the input model is not patched.
    other = torch.randn(1, channels // 4, 4, 4)
    assert torch.equal(patch(other.clone(), other.clone(), {})[0], other)
    assert "output_block_patch" not in model.model_options.get("transformer_options", {}).get("patches", {})


async def test_inpainting_workflows_with_the_new_nodes(tmp_path):
    fixtures.write_checkpoint(fixtures.models_folder(tmp_path) / "inpaint.safetensors", "sd1", inpaint=True)
    fixtures.write_checkpoint(fixtures.models_folder(tmp_path) / "sd1.safetensors", "sd1")
    (tmp_path / "input").mkdir()
    rgba = np.concatenate([(fixtures.image(64, 64)[0].numpy() * 255).astype(np.uint8),
                           np.full((64, 64, 1), 255, np.uint8)], axis=-1)
    rgba[16:48, 16:48, 3] = np.linspace(0, 255, 32, dtype=np.uint8)[None, :]  # a soft hole (alpha 0 = masked)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "input" / "hole.png")

    def prompt(checkpoint: str, prefix: str, noise_mask: bool = True, differential: bool = False,
               freeu: str = "") -> dict:
        model = ["ckpt", 0]
        graph = {
            "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
            "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red door", "clip": ["ckpt", 1]}},
            "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
            "load": {"class_type": "LoadImage", "inputs": {"image": "hole.png"}},
            "inpaint": {"class_type": "InpaintModelConditioning", "inputs": {
                "positive": ["pos", 0], "negative": ["neg", 0], "vae": ["ckpt", 2], "pixels": ["load", 0],
                "mask": ["load", 1], "noise_mask": noise_mask}},
            "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["ckpt", 2]}},
            "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": prefix}},
        }
        if differential:
            graph["diff"] = {"class_type": "DifferentialDiffusion", "inputs": {"model": model}}
            model = ["diff", 0]
        if freeu:
            graph["freeu"] = {"class_type": freeu, "inputs": {"model": model, "b1": 1.1, "b2": 1.2, "s1": 0.9,
                                                             "s2": 0.2}}
            model = ["freeu", 0]
        graph["ks"] = {"class_type": "KSampler", "inputs": {
            "model": model, "seed": 4, "steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["inpaint", 0], "negative": ["inpaint", 1], "latent_image": ["inpaint", 2], "denoise": 1.0}}
        return graph

    def pixels(outputs: dict) -> np.ndarray:
        (entry,) = outputs["save"]["images"]
        with Image.open(tmp_path / "output" / entry["subfolder"] / entry["filename"]) as image:
            return np.array(image).astype(np.int16)

    try:
        async with fixtures.core_comfy(tmp_path) as client:
            images = {name: pixels(await client.queue_prompt(prompt(*args, **options))) for name, args, options in [
                ("inpaint", ("inpaint.safetensors", "a"), {}),
                ("inpaint_again", ("inpaint.safetensors", "b"), {}),
                ("no_noise_mask", ("inpaint.safetensors", "c"), {"noise_mask": False}),
                ("differential", ("inpaint.safetensors", "d"), {"differential": True}),
                ("freeu", ("inpaint.safetensors", "e"), {"freeu": "FreeU"}),
                ("freeu_v2", ("inpaint.safetensors", "f"), {"freeu": "FreeU_V2"}),
                # An ordinary model ignores the concat inputs and inpaints through the noise mask alone.
                ("sd1", ("sd1.safetensors", "g"), {})]}
    finally:
        fixtures.stop_kernel()
    assert np.array_equal(images["inpaint"], images["inpaint_again"])
    names = [name for name in images if name != "inpaint_again"]
    for index, first in enumerate(names):
        for second in names[index + 1:]:
            assert not np.array_equal(images[first], images[second]), (first, second)
