"""Latent nodes: what each returns, and their /object_info entries as ComfyUI declares them."""
from __future__ import annotations

import pytest
import torch

import fixtures
from comfy.nodes.object_info import node_info
from comfy.nodes.registry import NodeRegistry
from comfyui_core_nodes import nodes_controlnet, nodes_latent as nodes, nodes_loaders, nodes_model
from comfyui_core_nodes.vae import VAE


def latent(batch: int = 1, height: int = 8, width: int = 8, seed: int = 0, **extra) -> dict:
    return {"samples": torch.randn(batch, 4, height, width, generator=torch.Generator().manual_seed(seed)), **extra}


def test_empty_latent_is_zero_at_an_eighth_of_the_size():
    (out,) = nodes.EmptyLatentImage().generate(72, 40, 3)
    assert out["samples"].shape == (3, 4, 5, 9) and not out["samples"].any()


def test_upscale_keeps_aspect_for_a_zero_side_and_bislerp_works():
    source = latent(height=8, width=16)
    (out,) = nodes.LatentUpscale().upscale(source, "nearest-exact", 0, 128, "disabled")
    assert out["samples"].shape == (1, 4, 16, 32)
    (same,) = nodes.LatentUpscale().upscale(source, "bilinear", 0, 0, "disabled")
    assert same is source
    (cropped,) = nodes.LatentUpscale().upscale(source, "bilinear", 64, 64, "center")
    assert cropped["samples"].shape == (1, 4, 8, 8)
    (by,) = nodes.LatentUpscaleBy().upscale(source, "bislerp", 1.5)
    assert by["samples"].shape == (1, 4, 12, 24) and torch.isfinite(by["samples"]).all()


def test_composite_pastes_and_feathers():
    target, source = latent(height=16, width=16, seed=1), latent(height=8, width=8, seed=2)
    (out,) = nodes.LatentComposite().composite(target, source, 32, 16, feather=0)
    assert torch.equal(out["samples"][:, :, 2:10, 4:12], source["samples"])
    assert torch.equal(out["samples"][:, :, :2], target["samples"][:, :, :2])
    (soft,) = nodes.LatentComposite().composite(target, source, 32, 16, feather=16)
    inner = soft["samples"][:, :, 4:8, 6:10]
    assert torch.allclose(inner, source["samples"][:, :, 2:6, 2:6])
    edge = soft["samples"][:, :, 2, 6]
    assert torch.allclose(edge, 0.5 * source["samples"][:, :, 0, 2] + 0.5 * target["samples"][:, :, 2, 6])


def test_blend_crop_flip_rotate():
    first, second = latent(seed=1), latent(seed=2)
    (blend,) = nodes.LatentBlend().blend(first, second, 0.25)
    assert torch.allclose(blend["samples"], 0.25 * first["samples"] + 0.75 * second["samples"])
    big = latent(height=16, width=24)
    (crop,) = nodes.LatentCrop().crop(big, 64, 64, 1000, 8)
    assert torch.equal(crop["samples"], big["samples"][:, :, 1:9, 16:24])
    (flip,) = nodes.LatentFlip().flip(big, "y-axis: horizontally")
    assert torch.equal(flip["samples"], big["samples"].flip(3))
    (rotated,) = nodes.LatentRotate().rotate(big, "90 degrees")
    assert rotated["samples"].shape == (1, 4, 24, 16)
    assert torch.equal(rotated["samples"][0, :, 0, 0], big["samples"][0, :, 15, 0])


def test_batches_keep_their_noise_offsets_and_masks():
    source = latent(batch=3, noise_mask=torch.rand(3, 1, 8, 8))
    (picked,) = nodes.LatentFromBatch().frombatch(source, 1, 5)
    assert picked["samples"].shape[0] == 2 and picked["batch_index"] == [1, 2]
    assert torch.equal(picked["noise_mask"], source["noise_mask"][1:3])
    (repeated,) = nodes.RepeatLatentBatch().repeat(picked, 3)
    assert repeated["samples"].shape[0] == 6 and repeated["batch_index"] == [1, 2, 3, 4, 5, 6]
    assert repeated["noise_mask"].shape[0] == 6
    (masked,) = nodes.SetLatentNoiseMask().set_mask(latent(), torch.ones(64, 64))
    assert masked["noise_mask"].shape == (1, 1, 64, 64)


def test_encode_for_inpaint_greys_the_masked_pixels_and_grows_the_mask():
    vae = VAE(sd=fixtures.vae_state_dict(prefix=""))
    pixels = fixtures.image(64, 64)
    mask = torch.zeros(64, 64)
    mask[16:32, 16:32] = 1.0
    (out,) = nodes.VAEEncodeForInpaint().encode(vae, pixels, mask, grow_mask_by=6)
    grey = pixels.clone()
    grey[:, 16:32, 16:32, :] = 0.5
    assert torch.allclose(out["samples"], vae.encode(grey), atol=1e-5)
    noise_mask = out["noise_mask"][0, 0]
    assert noise_mask[16:32, 16:32].all() and noise_mask[13:35, 13:35].sum() > mask.sum()
    assert not noise_mask[:8].any()
    (plain,) = nodes.VAEEncode().encode(vae, pixels)
    assert plain["samples"].shape == (1, 4, 8, 8)
    with pytest.raises(ValueError, match="No VAE"):
        nodes.VAEDecode().decode(None, plain)


# The entries ComfyUI's /object_info gives for these nodes (inputs, order, outputs, category).
OBJECT_INFO = {
    "EmptyLatentImage": {"category": "latent", "output": ["LATENT"], "input_order": {
        "required": ["width", "height", "batch_size"]}, "display_name": "Empty Latent Image"},
    "LatentUpscale": {"category": "latent", "input": {"required": {
        "samples": ["LATENT"], "upscale_method": [["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]],
        "width": ["INT", {"default": 512, "min": 0, "max": 16384, "step": 8}],
        "height": ["INT", {"default": 512, "min": 0, "max": 16384, "step": 8}],
        "crop": [["disabled", "center"]]}}},
    "LatentFromBatch": {"category": "latent/batch", "input": {"required": {
        "samples": ["LATENT"], "batch_index": ["INT", {"default": 0, "min": 0, "max": 63}],
        "length": ["INT", {"default": 1, "min": 1, "max": 64}]}}},
    "VAEEncodeForInpaint": {"category": "latent/inpaint", "display_name": "VAE Encode (for Inpainting)",
                            "input_order": {"required": ["pixels", "vae", "mask", "grow_mask_by"]}},
    "VAEDecodeTiled": {"category": "_for_testing", "input_order": {
        "required": ["samples", "vae", "tile_size", "overlap", "temporal_size", "temporal_overlap"]}},
    "LatentBlend": {"category": "_for_testing", "output": ["LATENT"]},
    "LatentRotate": {"category": "latent/transform", "input": {"required": {
        "samples": ["LATENT"], "rotation": [["none", "90 degrees", "180 degrees", "270 degrees"]]}}},
    "CheckpointLoaderSimple": {"category": "loaders", "output": ["MODEL", "CLIP", "VAE"],
                               "display_name": "Load Checkpoint"},
    "CheckpointLoader": {"category": "advanced/loaders", "deprecated": True},
    "unCLIPCheckpointLoader": {"category": "loaders", "output": ["MODEL", "CLIP", "VAE", "CLIP_VISION"],
                               "input_order": {"required": ["ckpt_name"]}},
    "UNETLoader": {"category": "advanced/loaders", "input_order": {"required": ["unet_name", "weight_dtype"]}},
    "LoraLoader": {"category": "loaders", "output": ["MODEL", "CLIP"], "input_order": {
        "required": ["model", "clip", "lora_name", "strength_model", "strength_clip"]}},
    "LoraLoaderModelOnly": {"category": "loaders", "output": ["MODEL"]},
    "DiffControlNetLoader": {"category": "loaders", "output": ["CONTROL_NET"]},
    "ControlNetApplyAdvanced": {"category": "conditioning/controlnet", "output": ["CONDITIONING", "CONDITIONING"],
                                "output_name": ["positive", "negative"], "input_order": {
        "required": ["positive", "negative", "control_net", "image", "strength", "start_percent", "end_percent"],
        "optional": ["vae"]}},
    "ControlNetApply": {"deprecated": True, "display_name": "Apply ControlNet (OLD)"},
    "FreeU_V2": {"category": "model_patches/unet", "input_order": {"required": ["model", "b1", "b2", "s1", "s2"]}},
    "ModelSamplingDiscrete": {"category": "advanced/model", "input": {"required": {
        "model": ["MODEL"], "sampling": [["eps", "v_prediction", "lcm", "x0", "img_to_img"]],
        "zsnr": ["BOOLEAN", {"default": False}]}}},
    "RescaleCFG": {"category": "advanced/model"},
    "ModelMergeBlocks": {"category": "advanced/model_merging", "input_order": {
        "required": ["model1", "model2", "input", "middle", "out"]}},
    "CheckpointSave": {"output_node": True, "output": [], "input_order": {
        "required": ["model", "clip", "vae", "filename_prefix"], "hidden": ["prompt", "extra_pnginfo"]}},
}


def as_json(value):
    if isinstance(value, (list, tuple)):
        return [as_json(item) for item in value]
    if isinstance(value, dict):
        return {key: as_json(item) for key, item in value.items()}
    return value


@pytest.mark.parametrize("name", sorted(OBJECT_INFO))
def test_object_info_matches_comfyui(name):
    registry = NodeRegistry()
    for module in (nodes, nodes_loaders, nodes_model, nodes_controlnet):
        registry.register_mappings("core_nodes", module.NODE_CLASS_MAPPINGS, module.NODE_DISPLAY_NAME_MAPPINGS)
    info = as_json(node_info(name, registry.get(name), registry))
    for key, expected in OBJECT_INFO[name].items():
        assert info[key] == expected, key
