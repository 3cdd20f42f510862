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


def txt2img(checkpoint: str, seed: int = 3, model: list | None = None, steps: int = 2) -> dict:
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cube", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "ks": {"class_type": "KSampler", "inputs": {"model": model or ["ckpt", 0], "seed": seed, "steps": steps,
                                                    "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal",
                                                    "positive": ["pos", 0], "negative": ["neg", 0],
                                                    "latent_image": ["empty", 0], "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": f"m{seed}"}},
    }


@pytest.mark.parametrize("method, kind", [("latent2rgb", "latent2rgb"), ("auto", "taesd"), ("none", None)])
async def test_sampling_previews(tmp_path, comfy, method, kind):
    from comfyui_core_nodes.preview import taesd_decoder

    fixtures.write_checkpoint(fixtures.models_folder(tmp_path) / "tiny.safetensors", "sd1")
    with torch.device("meta"):
        shapes = fixtures.module_shapes(taesd_decoder())
    fixtures.save_state_dict(fixtures.random_state_dict(shapes),
                             fixtures.models_folder(tmp_path, "vae_approx") / "taesd_decoder.safetensors")
    previews = []
    async with comfy(preview_method=method, preview_size=256) as client:
        task = client.queue_with_progress(txt2img("tiny.safetensors"))
        async for notification in task.progress():
            if notification.event == "preview_image":
                previews.append(notification.data["image"])
        await task.get()
    if kind is None:
        assert previews == []
        return
    assert len(previews) == 2
    image_format, image, max_size = previews[-1]
    # latent2rgb shows the latent's own size; TAESD decodes to the image's.
    assert (image_format, max_size) == ("JPEG", 256)
    assert image.size == ((8, 8) if kind == "latent2rgb" else (64, 64))


async def test_vanilla_modules_resolve_to_this_plugin(tmp_path, comfy):
    import importlib

    fixtures.write_checkpoint(fixtures.models_folder(tmp_path) / "tiny.safetensors", "sd1")
    async with comfy():
        nodes = importlib.import_module("nodes")
        sd = importlib.import_module("comfy.sd")
        utils = importlib.import_module("comfy.utils")
        mm = importlib.import_module("comfy.model_management")
        assert nodes.MAX_RESOLUTION == 16384
        assert nodes.NODE_CLASS_MAPPINGS["VAEDecode"] is nodes.VAEDecode
        assert mm.get_torch_device() == torch.device("cpu") and mm is model_management
        # How vanilla custom nodes load a checkpoint and use it.
        model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint("tiny.safetensors")
        assert model.model.model_config.unet_config["model_channels"] == 32
        assert isinstance(clip, sd.CLIP) and isinstance(vae, sd.VAE)
        detect = importlib.import_module("comfy.model_detection").detect_unet_config
        assert detect(fixtures.unet_state_dict("sdxl"), "model.diffusion_model.")["adm_in_channels"] == 1568
        out = sd.load_checkpoint_guess_config(str(tmp_path / "models" / "checkpoints" / "tiny.safetensors"))
        assert len(out) == 4 and out[3] is None
        pixels = utils.common_upscale(torch.rand(1, 3, 8, 8), 16, 12, "bilinear", "center")
        assert pixels.shape == (1, 3, 12, 16)
        for name in ("comfy.model_patcher", "comfy.model_base", "comfy.lora", "comfy.controlnet",
                     "comfy.latent_formats", "comfy.model_sampling", "comfy.ops", "comfy.conds", "latent_preview",
                     "comfy.ldm.modules.attention"):
            assert importlib.import_module(name).__name__.startswith("comfyui_core_nodes."), name


async def test_model_tweak_nodes_and_checkpoint_save(tmp_path, comfy):
    from comfyui_core_nodes.sd import load_checkpoint_guess_config

    fixtures.write_checkpoint(fixtures.models_folder(tmp_path) / "a.safetensors", "sd1", seed=0)
    fixtures.write_checkpoint(fixtures.models_folder(tmp_path) / "b.safetensors", "sd1", seed=1)

    def pixels(outputs: dict, node: str = "save") -> np.ndarray:
        return saved(tmp_path, {"save": outputs[node]})[0]

    merged = txt2img("a.safetensors", model=["merge", 0])
    merged["other"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}}
    merged["merge"] = {"class_type": "ModelMergeSimple", "inputs": {"model1": ["ckpt", 0], "model2": ["other", 0],
                                                                    "ratio": 1.0}}
    tweaked = txt2img("a.safetensors", model=["rescale", 0])
    tweaked["freeu"] = {"class_type": "FreeU_V2", "inputs": {"model": ["ckpt", 0], "b1": 1.3, "b2": 1.4, "s1": 0.9,
                                                             "s2": 0.2}}
    tweaked["vpred"] = {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["freeu", 0],
                                                                          "sampling": "v_prediction", "zsnr": True}}
    tweaked["rescale"] = {"class_type": "RescaleCFG", "inputs": {"model": ["vpred", 0], "multiplier": 0.7}}
    save = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
            "other": merged["other"],
            "merge": {"class_type": "ModelMergeBlocks", "inputs": {"model1": ["ckpt", 0], "model2": ["other", 0],
                                                                   "input": 0.0, "middle": 1.0, "out": 1.0}},
            "write": {"class_type": "CheckpointSave", "inputs": {"model": ["merge", 0], "clip": ["ckpt", 1],
                                                                 "vae": ["ckpt", 2],
                                                                 "filename_prefix": "checkpoints/merged"}}}
    async with comfy() as client:
        plain = pixels(await client.queue_prompt(txt2img("a.safetensors")))
        # ratio 1.0 keeps model1 entirely.
        assert np.array_equal(pixels(await client.queue_prompt(merged)), plain)
        merged["merge"]["inputs"]["ratio"] = 0.5
        assert not np.array_equal(pixels(await client.queue_prompt(merged)), plain)
        assert not np.array_equal(pixels(await client.queue_prompt(tweaked)), plain)
        await client.queue_prompt(save)
        # The base model is unchanged after merging and tweaking.
        assert np.array_equal(pixels(await client.queue_prompt(txt2img("a.safetensors"))), plain)
    written = tmp_path / "output" / "checkpoints" / "merged_00001_.safetensors"
    model, clip, vae, _ = load_checkpoint_guess_config(str(written))
    a = fixtures.checkpoint_state_dict("sd1", seed=0)
    b = fixtures.checkpoint_state_dict("sd1", seed=1)
    state = model.model.diffusion_model.state_dict()
    # input blocks from model2 (ratio 0), the rest from model1; the VAE as it was.
    assert torch.equal(state["input_blocks.1.0.in_layers.2.weight"], b["model.diffusion_model.input_blocks.1.0.in_layers.2.weight"])
    assert torch.equal(state["out.2.weight"], a["model.diffusion_model.out.2.weight"])
    assert torch.equal(vae.get_sd()["decoder.conv_in.weight"], a["first_stage_model.decoder.conv_in.weight"])
    assert clip is not None


async def test_sdxl_base_then_refiner_and_an_inpainting_model(tmp_path, comfy):
    folder = fixtures.models_folder(tmp_path)
    fixtures.write_checkpoint(folder / "xl.safetensors", "sdxl")
    fixtures.write_checkpoint(folder / "refiner.safetensors", "sdxl_refiner")
    fixtures.write_checkpoint(folder / "inpaint.safetensors", "sd1", inpaint=True)

    def advanced(model: list, positive: str, negative: str, latent: list, start: int, end: int, noise: str,
                 leftover: str) -> dict:
        return {"class_type": "KSamplerAdvanced", "inputs": {
            "model": model, "add_noise": noise, "noise_seed": 11, "steps": 4, "cfg": 5.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": [positive, 0], "negative": [negative, 0], "latent_image": latent,
            "start_at_step": start, "end_at_step": end, "return_with_leftover_noise": leftover}}

    def encode_xl(text: str) -> dict:
        return {"class_type": "CLIPTextEncodeSDXL", "inputs": {
            "clip": ["base", 1], "width": 64, "height": 64, "crop_w": 0, "crop_h": 0, "target_width": 64,
            "target_height": 64, "text_g": text, "text_l": text}}

    def encode_refiner(text: str, score: float) -> dict:
        return {"class_type": "CLIPTextEncodeSDXLRefiner", "inputs": {"clip": ["refiner", 1], "ascore": score,
                                                                      "width": 64, "height": 64, "text": text}}

    two_stage = {
        "base": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "xl.safetensors"}},
        "refiner": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "refiner.safetensors"}},
        "pos": encode_xl("a cube"), "neg": encode_xl("blurry"),
        "rpos": encode_refiner("a cube", 6.0), "rneg": encode_refiner("blurry", 2.5),
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "first": advanced(["base", 0], "pos", "neg", ["empty", 0], 0, 3, "enable", "enable"),
        "second": advanced(["refiner", 0], "rpos", "rneg", ["first", 0], 3, 10000, "disable", "disable"),
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["second", 0], "vae": ["base", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "xl"}},
    }
    inpaint = txt2img("inpaint.safetensors", model=["ckpt", 0])
    inpaint["source"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                                "color": 0x336699}}
    inpaint["mask"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 32}}
    inpaint["encode"] = {"class_type": "VAEEncodeForInpaint", "inputs": {"pixels": ["source", 0], "vae": ["ckpt", 2],
                                                                         "mask": ["mask", 0], "grow_mask_by": 6}}
    inpaint["ks"]["inputs"]["latent_image"] = ["encode", 0]
    async with comfy() as client:
        refined = saved(tmp_path, await client.queue_prompt(two_stage))[0]
        again = saved(tmp_path, await client.queue_prompt(two_stage))[0]
        painted = saved(tmp_path, await client.queue_prompt(inpaint))[0]
    assert refined.shape == (64, 64, 3) and np.array_equal(refined, again)
    assert painted.shape == (64, 64, 3)


async def test_unclip_checkpoint_conditions_on_an_image(tmp_path, comfy):
    fixtures.write_checkpoint(fixtures.models_folder(tmp_path) / "unclip.safetensors", "sd2_unclip")

    def prompt(strength: float, color: int) -> dict:
        graph = txt2img("unclip.safetensors", model=["ckpt", 0])
        graph["ckpt"] = {"class_type": "unCLIPCheckpointLoader", "inputs": {"ckpt_name": "unclip.safetensors"}}
        graph["image"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                                 "color": color}}
        graph["vision"] = {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["ckpt", 3],
                                                                        "image": ["image", 0], "crop": "center"}}
        graph["unclip"] = {"class_type": "unCLIPConditioning", "inputs": {
            "conditioning": ["pos", 0], "clip_vision_output": ["vision", 0], "strength": strength,
            "noise_augmentation": 0.1}}
        graph["ks"]["inputs"]["positive"] = ["unclip", 0]
        return graph

    async with comfy() as client:
        red = saved(tmp_path, await client.queue_prompt(prompt(1.0, 0xff0000)))[0]
        blue = saved(tmp_path, await client.queue_prompt(prompt(1.0, 0x0000ff)))[0]
        again = saved(tmp_path, await client.queue_prompt(prompt(1.0, 0x0000ff)))[0]
        with pytest.raises(PromptExecutionError, match="without a CLIP vision model"):
            fixtures.write_checkpoint(fixtures.models_folder(tmp_path) / "plain.safetensors", "sd2")
            await client.queue_prompt({"ckpt": {"class_type": "unCLIPCheckpointLoader",
                                                "inputs": {"ckpt_name": "plain.safetensors"}},
                                       "save": {"class_type": "SaveImage", "inputs": {
                                           "images": ["decode", 0], "filename_prefix": "x"}},
                                       "empty": {"class_type": "EmptyLatentImage", "inputs": {
                                           "width": 64, "height": 64, "batch_size": 1}},
                                       "decode": {"class_type": "VAEDecode", "inputs": {
                                           "samples": ["empty", 0], "vae": ["ckpt", 2]}}})
    assert red.shape == (64, 64, 3) and not np.array_equal(red, blue) and np.array_equal(blue, again)


def test_unclip_adm_vector_is_the_noised_embedding_and_its_level():
    from comfyui_core_nodes.model_base import NoiseAugmentor, unclip_adm
    from comfyui_core_nodes.text_encoders.vision import Output

    augmentor = NoiseAugmentor(4)
    output = Output()
    output.image_embeds = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    entry = {"clip_vision_output": output, "strength": 2.0, "noise_augmentation": 0.0}
    adm = unclip_adm([entry], "cpu", augmentor, seed=5)
    # Level 0 barely noises: sqrt(alpha_bar_0) is close to 1.
    assert adm.shape == (1, 8) and torch.allclose(adm[:, :4], 2.0 * output.image_embeds, atol=0.1)
    assert torch.equal(adm, unclip_adm([entry], "cpu", augmentor, seed=5))
    assert not torch.equal(adm, unclip_adm([entry], "cpu", augmentor, seed=6))


def test_sdxl_revision_puts_the_image_embedding_where_the_pooled_text_goes():
    from comfyui_core_nodes.sd import load_state_dict_guess_config
    from comfyui_core_nodes.text_encoders.vision import Output

    model, _, _, _ = load_state_dict_guess_config(fixtures.checkpoint_state_dict("sdxl"), output_clip=False)
    output = Output()
    output.image_embeds = torch.randn(1, fixtures.TEXT_WIDTH, generator=torch.Generator().manual_seed(0))
    common = {"device": "cpu", "width": 64, "height": 64, "seed": 3}
    revision = model.model.encode_adm(unclip_conditioning=[{"clip_vision_output": output, "strength": 1.0,
                                                           "noise_augmentation": 0.0}], **common)
    text = model.model.encode_adm(pooled_output=torch.zeros(1, fixtures.TEXT_WIDTH), **common)
    assert revision.shape == text.shape == (1, model.model.adm_channels)
    assert torch.equal(revision[:, fixtures.TEXT_WIDTH:], text[:, fixtures.TEXT_WIDTH:])
    assert torch.allclose(revision[:, :fixtures.TEXT_WIDTH], output.image_embeds, atol=0.05)
