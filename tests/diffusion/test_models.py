"""Tiny real checkpoints of each family through the embedded client: load, decode, save; UNet and VAE files."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

import fixtures
from comfy.transport import PromptExecutionError
from comfyui_core_nodes import model_management
from comfyui_core_nodes.model_base import create_model
from comfyui_core_nodes.detection import model_config_for
from comfyui_core_nodes.loading import load_into

FAMILIES = ["sd1", "sd2", "sdxl", "sdxl_refiner"]


@pytest.fixture
def comfy(tmp_path):
    yield lambda **options: fixtures.core_comfy(tmp_path, **options)
    fixtures.stop_kernel()


def decode_prompt(loader: dict, model_output: list, vae_output: list, width: int = 64, height: int = 48) -> dict:
    return {
        "load": loader,
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 2}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["empty", 0], "vae": vae_output}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "tiny/out"}},
    }


def saved(tmp_path, outputs: dict) -> list[np.ndarray]:
    images = []
    for entry in outputs["save"]["images"]:
        with Image.open(os.path.join(tmp_path, "output", entry["subfolder"], entry["filename"])) as image:
            images.append(np.array(image))
    return images


@pytest.mark.parametrize("family", FAMILIES)
async def test_checkpoint_loader_empty_latent_decode_save(tmp_path, comfy, family):
    fixtures.write_checkpoint(fixtures.models_folder(tmp_path) / f"tiny_{family}.safetensors", family)
    prompt = decode_prompt({"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": f"tiny_{family}.safetensors"}},
                           ["load", 0], ["load", 2])
    async with comfy() as client:
        images = saved(tmp_path, await client.queue_prompt(prompt))
    assert [image.shape for image in images] == [(48, 64, 3), (48, 64, 3)]
    # A zero latent decodes to the same picture in both batch entries, not to a flat colour.
    assert np.array_equal(images[0], images[1]) and images[0].std() > 0


async def test_unet_and_vae_files_load_through_their_loaders(tmp_path, comfy):
    sd = fixtures.checkpoint_state_dict("sd1")
    fixtures.save_state_dict({k: v for k, v in sd.items() if k.startswith("model.diffusion_model.")},
                             fixtures.models_folder(tmp_path, "diffusion_models") / "unet.safetensors")
    fixtures.save_state_dict(fixtures.vae_state_dict(prefix=""), fixtures.models_folder(tmp_path, "vae") / "vae.pt")
    prompt = decode_prompt({"class_type": "UNETLoader", "inputs": {"unet_name": "unet.safetensors",
                                                                   "weight_dtype": "default"}},
                           ["load", 0], ["vae", 0])
    prompt["vae"] = {"class_type": "VAELoader", "inputs": {"vae_name": "vae.pt"}}
    prompt["report"] = {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["load", 0], "sampling": "eps",
                                                                          "zsnr": False}}
    async with comfy() as client:
        images = saved(tmp_path, await client.queue_prompt(prompt))
    assert images[0].shape == (48, 64, 3)


async def test_wrong_files_give_readable_errors(tmp_path, comfy):
    fixtures.save_state_dict(fixtures.vae_state_dict(prefix=""),
                             fixtures.models_folder(tmp_path) / "actually_a_vae.safetensors")
    (fixtures.models_folder(tmp_path) / "broken.safetensors").write_bytes(b"not a model at all")
    async with comfy() as client:
        with pytest.raises(PromptExecutionError, match="actually_a_vae.safetensors is not a Stable Diffusion "
                                                       "checkpoint.*looks like a VAE"):
            await client.queue_prompt(decode_prompt({"class_type": "CheckpointLoaderSimple",
                                                     "inputs": {"ckpt_name": "actually_a_vae.safetensors"}},
                                                    ["load", 0], ["load", 2]))
        with pytest.raises(PromptExecutionError, match="broken.safetensors"):
            await client.queue_prompt(decode_prompt({"class_type": "CheckpointLoaderSimple",
                                                     "inputs": {"ckpt_name": "broken.safetensors"}},
                                                    ["load", 0], ["load", 2]))


def test_unet_forward_is_deterministic_and_in_model_dtype():
    sd = fixtures.unet_state_dict("sd1", prefix="")
    config = model_config_for(sd)
    config.set_inference_dtype(torch.float32, None)
    model = create_model(config, device=torch.device("meta"))
    load_into(model.diffusion_model, sd, torch.float32)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    context = torch.randn(2, 77, fixtures.TEXT_WIDTH, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([14.6, 1.0])
    first = model.apply_model(x, sigma, c_crossattn=context)
    assert first.dtype == torch.float32 and torch.equal(first, model.apply_model(x, sigma, c_crossattn=context))
    # Each batch entry is computed independently of the others.
    single = model.apply_model(x[1:], sigma[1:], c_crossattn=context[1:])
    assert torch.allclose(first[1:], single, atol=1e-5)


def test_vae_round_trip_and_tiled_decoding_agree():
    from comfyui_core_nodes.vae import VAE

    vae = VAE(sd=fixtures.vae_state_dict(prefix=""))
    image = fixtures.image(64, 96)
    latent = vae.encode(image)
    assert latent.shape == (1, 4, 8, 12)
    decoded = vae.decode(latent)
    assert decoded.shape == (1, 64, 96, 3) and 0 <= decoded.min() and decoded.max() <= 1
    # Tiles as large as the latent reproduce the plain decode; small tiles stay close to it.
    assert torch.allclose(vae.decode_tiled(latent, tile_x=32, tile_y=32, overlap=4), decoded, atol=1e-5)
    tiled = vae.decode_tiled(latent, tile_x=16, tile_y=16, overlap=4)
    assert tiled.shape == decoded.shape and (tiled - decoded).abs().mean() < 0.06
    assert vae.encode_tiled(image, tile_x=64, tile_y=64, overlap=16).shape == latent.shape
    # Sizes that are not multiples of 8 are cropped around the centre before encoding.
    assert vae.encode(fixtures.image(70, 99)).shape == (1, 4, 8, 12)


def test_model_management_reports_cpu_here():
    assert model_management.get_torch_device() == torch.device("cpu")
    assert model_management.intermediate_device() == torch.device("cpu")
