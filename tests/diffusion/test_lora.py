"""LoRA patches: formats (kohya LoRA/LoCon, LoHa, LoKr, diffusers/peft names), stacking, restoring the base."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

import fixtures
from comfyui_core_nodes import lora, model_management
from comfyui_core_nodes.model_patcher import ModelPatcher
from comfyui_core_nodes.sd import load_state_dict_guess_config

TARGET = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
KOHYA = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
CONV = "diffusion_model.input_blocks.1.0.in_layers.2.weight"  # a 3x3 conv (LoCon target)


@pytest.fixture(scope="module")
def checkpoint():
    model, clip, vae, _ = load_state_dict_guess_config(fixtures.checkpoint_state_dict("sd1"))
    return model, clip


def weight(patcher: ModelPatcher, key: str) -> torch.Tensor:
    model_management.load_models_gpu([patcher])
    return patcher.model.state_dict()[key].clone()


def test_key_map_covers_kohya_diffusers_and_ldm_names(checkpoint):
    model, _ = checkpoint
    key_map = lora.model_lora_keys_unet(model.model)
    assert key_map[KOHYA] == TARGET
    assert key_map["lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"] == TARGET
    assert key_map["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q"] == TARGET
    assert key_map["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"] == TARGET
    assert key_map["lora_unet_down_blocks_0_resnets_0_conv1"] == CONV
    assert key_map["lora_unet_up_blocks_0_upsamplers_0_conv"] == "diffusion_model.output_blocks.1.2.conv.weight"
    assert key_map["lora_unet_mid_block_resnets_1_conv2"] == "diffusion_model.middle_block.2.out_layers.3.weight"


def test_every_format_gives_the_expected_difference(checkpoint):
    model, _ = checkpoint
    base = weight(model, TARGET)
    out_features, in_features = base.shape
    generator = torch.Generator().manual_seed(0)
    up, down = torch.randn(out_features, 2, generator=generator), torch.randn(2, in_features, generator=generator)
    a1, b1, a2, b2 = (torch.randn(shape, generator=generator) for shape in
                      ((out_features, 2), (2, in_features), (out_features, 2), (2, in_features)))
    w1 = torch.randn(2, 2, generator=generator)
    w2 = torch.randn(out_features // 2, in_features // 2, generator=generator)
    formats = [
        ({f"{KOHYA}.lora_up.weight": up, f"{KOHYA}.lora_down.weight": down, f"{KOHYA}.alpha": torch.tensor(1.0)},
         0.5 * up @ down),
        ({"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": up,
          "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": down}, up @ down),
        ({f"{KOHYA}.hada_w1_a": a1, f"{KOHYA}.hada_w1_b": b1, f"{KOHYA}.hada_w2_a": a2, f"{KOHYA}.hada_w2_b": b2,
          f"{KOHYA}.alpha": torch.tensor(2.0)}, (a1 @ b1) * (a2 @ b2)),
        ({f"{KOHYA}.lokr_w1": w1, f"{KOHYA}.lokr_w2": w2}, torch.kron(w1, w2)),
        ({f"{KOHYA}.diff": torch.ones_like(base)}, torch.ones_like(base)),
    ]
    for lora_sd, difference in formats:
        patched, _ = lora.load_lora_for_models(model, None, lora_sd, 0.8, 0.0)
        assert torch.allclose(weight(patched, TARGET), base + 0.8 * difference, atol=1e-4), list(lora_sd)[0]
    assert torch.equal(weight(model, TARGET), base)


def test_locon_patches_convolutions(checkpoint):
    model, _ = checkpoint
    base = weight(model, CONV)
    generator = torch.Generator().manual_seed(1)
    up = torch.randn(base.shape[0], 4, 1, 1, generator=generator)
    down = torch.randn(4, base.shape[1], 3, 3, generator=generator)
    name = "lora_unet_down_blocks_0_resnets_0_conv1"
    patched, _ = lora.load_lora_for_models(model, None, {f"{name}.lora_up.weight": up,
                                                         f"{name}.lora_down.weight": down}, 1.0, 0.0)
    expected = (up.flatten(1) @ down.flatten(1)).reshape(base.shape)
    assert torch.allclose(weight(patched, CONV), base + expected, atol=1e-4)


def test_two_loras_stack_and_the_base_comes_back(checkpoint):
    model, clip = checkpoint
    base = weight(model, TARGET)
    first_sd = fixtures.lora_state_dict("sd1", seed=1)
    second_sd = fixtures.lora_state_dict("sd1", seed=2)
    first, first_clip = lora.load_lora_for_models(model, clip, first_sd, 1.0, 1.0)
    both, _ = lora.load_lora_for_models(first, first_clip, second_sd, 0.5, 1.0)
    delta_first = weight(first, TARGET) - base
    delta_both = weight(both, TARGET) - base
    second_only, _ = lora.load_lora_for_models(model, clip, second_sd, 0.5, 1.0)
    delta_second = weight(second_only, TARGET) - base
    assert torch.allclose(delta_both, delta_first + delta_second, atol=1e-4)
    assert not torch.allclose(delta_first, torch.zeros_like(delta_first))
    # The text encoder clone carries the LoRA's te patches, the base CLIP none.
    assert len(first_clip.patcher.patches) == 4 and not clip.patcher.patches
    assert torch.equal(weight(model, TARGET), base)


async def test_lora_loader_changes_the_image_and_leaves_the_next_prompt_alone(tmp_path):
    fixtures.write_checkpoint(fixtures.models_folder(tmp_path) / "tiny.safetensors", "sd1")
    fixtures.save_state_dict(fixtures.lora_state_dict("sd1", scale=0.5),
                             fixtures.models_folder(tmp_path, "loras") / "style.safetensors")

    def prompt(with_lora: bool, prefix: str) -> dict:
        model, clip = (["lora", 0], ["lora", 1]) if with_lora else (["ckpt", 0], ["ckpt", 1])
        return {
            "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
            "lora": {"class_type": "LoraLoader", "inputs": {"model": ["ckpt", 0], "clip": ["ckpt", 1],
                                                            "lora_name": "style.safetensors", "strength_model": 1.0,
                                                            "strength_clip": 1.0}},
            "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cube", "clip": clip}},
            "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": clip}},
            "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "ks": {"class_type": "KSampler", "inputs": {"model": model, "seed": 5, "steps": 3, "cfg": 5.0,
                                                        "sampler_name": "euler", "scheduler": "normal",
                                                        "positive": ["pos", 0], "negative": ["neg", 0],
                                                        "latent_image": ["empty", 0], "denoise": 1.0}},
            "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["ckpt", 2]}},
            "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": prefix}},
        }

    def pixels(outputs: dict) -> np.ndarray:
        (entry,) = outputs["save"]["images"]
        with Image.open(os.path.join(tmp_path, "output", entry["subfolder"], entry["filename"])) as image:
            return np.array(image)

    try:
        async with fixtures.core_comfy(tmp_path) as client:
            before = pixels(await client.queue_prompt(prompt(False, "before")))
            with_lora = pixels(await client.queue_prompt(prompt(True, "lora")))
            after = pixels(await client.queue_prompt(prompt(False, "after")))
    finally:
        fixtures.stop_kernel()
    assert not np.array_equal(before, with_lora)
    assert np.array_equal(before, after)
