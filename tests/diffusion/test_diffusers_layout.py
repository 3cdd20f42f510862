"""Files in the diffusers layout: UNets (UNETLoader), ControlNets and T2I-Adapters (full and light), made by the
``diffusers`` library itself with tiny configs, load through our loaders and compute what diffusers computes; and
xinsir's union ControlNets (diffusers layout plus control-type parts) with SetUnionControlNetType."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import fixtures
from comfyui_core_nodes.controlnet import load_controlnet
from comfyui_core_nodes.loading import ModelFileError
from comfyui_core_nodes.sd import CheckpointError, load_diffusion_model
from comfyui_core_nodes.unet import timestep_embedding

diffusers = pytest.importorskip("diffusers")

TEXT_WIDTH = 32
# SD1.x's structure (conv projections, 8 heads, a transformer at every level) and SDXL's (linear projections,
# 64-wide heads, no transformer at the first level, the size/crop ADM vector), with few channels.
SD1_LIKE = dict(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TEXT_WIDTH,
                attention_head_dim=8, layers_per_block=1)
SDXL_LIKE = dict(block_out_channels=(32, 64, 64),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 cross_attention_dim=2 * TEXT_WIDTH, attention_head_dim=(1, 1, 1), layers_per_block=1,
                 use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=TEXT_WIDTH + 6 * 256)


def randomized(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """diffusers zero-initialises some layers; fill every weight so each one matters to the output."""
    values = fixtures.random_state_dict({key: tuple(value.shape) for key, value in module.state_dict().items()}, seed)
    module.load_state_dict(values)
    return module.eval()


def save(module: torch.nn.Module, path: Path) -> Path:
    return fixtures.save_state_dict(module.state_dict(), path)


def close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    scale = theirs.abs().max().item()
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= 1e-4 * max(scale, 1.0), (ours - theirs).abs().max().item()


def sdxl_vector(text_embeds: torch.Tensor, time_ids: torch.Tensor) -> torch.Tensor:
    """The ADM vector SDXL's UNet takes: the pooled text embedding, then each size/crop number embedded in 256."""
    sizes = timestep_embedding(time_ids.flatten(), 256).reshape(time_ids.shape[0], -1)
    return torch.cat([text_embeds, sizes], dim=1)


@pytest.mark.parametrize("config", [SD1_LIKE, SDXL_LIKE], ids=["sd1", "sdxl"])
def test_diffusers_unet_loads_and_computes_as_diffusers(tmp_path, config):
    theirs = randomized(diffusers.UNet2DConditionModel(sample_size=8, **config), seed=1)
    path = save(theirs, tmp_path / "diffusion_pytorch_model.safetensors")

    model = load_diffusion_model(str(path))
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([10.0, 700.0])
    context = torch.randn(2, 5, config["cross_attention_dim"], generator=generator)
    extra, y = {}, None
    if "addition_embed_type" in config:
        text_embeds = torch.randn(2, TEXT_WIDTH, generator=generator)
        time_ids = torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]] * 2)
        extra = {"added_cond_kwargs": {"text_embeds": text_embeds, "time_ids": time_ids}}
        y = sdxl_vector(text_embeds, time_ids)
    with torch.no_grad():
        expected = theirs(x, timesteps, encoder_hidden_states=context, **extra).sample
        ours = model.model.diffusion_model(x, timesteps, context=context, y=y)
    close(ours, expected)


def test_diffusers_controlnet_loads_and_computes_as_diffusers(tmp_path):
    config = {key: value for key, value in SD1_LIKE.items() if key != "up_block_types"}
    theirs = randomized(diffusers.ControlNetModel(**config), seed=2)
    control = load_controlnet(str(save(theirs, tmp_path / "controlnet.safetensors")))

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=generator)
    hint = torch.rand(1, 3, 64, 64, generator=generator)
    timesteps = torch.tensor([500.0])
    context = torch.randn(1, 5, TEXT_WIDTH, generator=generator)
    with torch.no_grad():
        down, middle = theirs(x, timesteps, encoder_hidden_states=context, controlnet_cond=hint, return_dict=False)
        ours = control.control_model(x, hint, timesteps, context)
    assert len(ours["output"]) == len(down)
    for mine, expected in zip(ours["output"], down):
        close(mine, expected)
    close(ours["middle"][0], middle)


@pytest.mark.parametrize("adapter_type, channels", [("full_adapter", [32, 64, 128, 128]),
                                                     ("light_adapter", [32, 64, 128])])
def test_diffusers_t2i_adapter_loads_and_computes_as_diffusers(tmp_path, adapter_type, channels):
    theirs = randomized(diffusers.T2IAdapter(in_channels=3, channels=channels, num_res_blocks=2,
                                             downscale_factor=8, adapter_type=adapter_type), seed=3)
    adapter = load_controlnet(str(save(theirs, tmp_path / "adapter.safetensors")))

    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = theirs(image)
        features = adapter.t2i_model(image)["input"]
    ours = [feature for feature in reversed(features) if feature is not None]
    assert len(ours) == len(expected)
    for mine, theirs_feature in zip(ours, expected):
        close(mine, theirs_feature)


def test_light_adapter_in_its_original_layout_loads(tmp_path):
    from comfyui_core_nodes.controlnet import LightAdapter, load_t2i_adapter

    with torch.device("meta"):
        shapes = fixtures.module_shapes(LightAdapter([32, 64, 128, 128], nums_rb=4, cin=3 * 64))
    adapter = load_t2i_adapter(fixtures.random_state_dict(shapes, seed=4))
    assert isinstance(adapter.t2i_model, LightAdapter)
    features = adapter.t2i_model(torch.rand(1, 3, 64, 64))["input"]
    assert [tuple(f.shape) for f in features if f is not None] == [(1, 128, 1, 1), (1, 128, 2, 2), (1, 64, 4, 4),
                                                                    (1, 32, 8, 8)]


def test_incomplete_diffusers_unet_is_a_clear_error(tmp_path):
    theirs = diffusers.UNet2DConditionModel(sample_size=8, **SD1_LIKE)
    partial = {key: value for key, value in theirs.state_dict().items() if not key.startswith("up_blocks.1.")}
    path = fixtures.save_state_dict(partial, tmp_path / "broken.safetensors")
    with pytest.raises((CheckpointError, ModelFileError), match="broken.safetensors"):
        load_diffusion_model(str(path))


def test_diffusers_controlnet_given_to_the_unet_loader_says_what_it_is(tmp_path):
    config = {key: value for key, value in SD1_LIKE.items() if key != "up_block_types"}
    path = save(diffusers.ControlNetModel(**config), tmp_path / "cn.safetensors")
    with pytest.raises(CheckpointError, match=r"cn\.safetensors.*a ControlNet \(use ControlNetLoader\)"):
        load_diffusion_model(str(path))


def union_controlnet_state_dict(types: int = 6, seed: int = 5) -> dict[str, torch.Tensor]:
    """xinsir's union ControlNet layout: a diffusers SDXL ControlNet plus the control-type parts (task embedding,
    one transformer block with a packed ``in_proj_weight``, the projection back to the UNet width, the type
    embedding)."""
    config = {key: value for key, value in SDXL_LIKE.items() if key != "up_block_types"}
    sd = randomized(diffusers.ControlNetModel(**config), seed=seed).state_dict()
    width, model_channels, time_width = 32, 32, 128
    shapes = {"task_embedding": (types, width),
              "transformer_layes.0.attn.in_proj_weight": (3 * width, width),
              "transformer_layes.0.attn.in_proj_bias": (3 * width,),
              "transformer_layes.0.attn.out_proj.weight": (width, width),
              "transformer_layes.0.attn.out_proj.bias": (width,),
              "transformer_layes.0.ln_1.weight": (width,), "transformer_layes.0.ln_1.bias": (width,),
              "transformer_layes.0.ln_2.weight": (width,), "transformer_layes.0.ln_2.bias": (width,),
              "transformer_layes.0.mlp.c_fc.weight": (4 * width, width), "transformer_layes.0.mlp.c_fc.bias": (4 * width,),
              "transformer_layes.0.mlp.c_proj.weight": (width, 4 * width),
              "transformer_layes.0.mlp.c_proj.bias": (width,),
              "spatial_ch_projs.weight": (model_channels, width), "spatial_ch_projs.bias": (model_channels,),
              "control_add_embedding.linear_1.weight": (time_width, 256 * types),
              "control_add_embedding.linear_1.bias": (time_width,),
              "control_add_embedding.linear_2.weight": (time_width, time_width),
              "control_add_embedding.linear_2.bias": (time_width,)}
    return {**sd, **fixtures.random_state_dict(shapes, seed)}


def test_union_attention_block_is_a_pre_norm_transformer_block():
    from comfyui_core_nodes.controlnet import UNION_HEADS, _UnionAttentionBlock
    from comfyui_core_nodes.ops import disable_weight_init

    width = 32
    block = _UnionAttentionBlock(width, None, None, disable_weight_init)
    reference = torch.nn.MultiheadAttention(width, UNION_HEADS, batch_first=True)
    weights = fixtures.random_state_dict({key: tuple(value.shape) for key, value in block.state_dict().items()}, 6)
    block.load_state_dict(weights)
    reference.load_state_dict({"in_proj_weight": weights["attn.in_proj.weight"],
                               "in_proj_bias": weights["attn.in_proj.bias"],
                               "out_proj.weight": weights["attn.out_proj.weight"],
                               "out_proj.bias": weights["attn.out_proj.bias"]})
    x = torch.randn(2, 3, width, generator=torch.Generator().manual_seed(0))
    normed = torch.nn.functional.layer_norm(x, (width,), weights["ln_1.weight"], weights["ln_1.bias"])
    h = x + reference(normed, normed, normed, need_weights=False)[0]
    hidden = torch.nn.functional.linear(torch.nn.functional.layer_norm(h, (width,), weights["ln_2.weight"],
                                                                       weights["ln_2.bias"]),
                                        weights["mlp.c_fc.weight"], weights["mlp.c_fc.bias"])
    expected = h + torch.nn.functional.linear(hidden * torch.sigmoid(1.702 * hidden), weights["mlp.c_proj.weight"],
                                              weights["mlp.c_proj.bias"])
    with torch.no_grad():
        close(block(x), expected)


async def test_union_controlnet_takes_its_control_type_from_the_node(tmp_path):
    from PIL import Image

    from comfy.transport import PromptExecutionError

    fixtures.write_checkpoint(fixtures.models_folder(tmp_path) / "xl.safetensors", "sdxl")
    fixtures.save_state_dict(union_controlnet_state_dict(),
                             fixtures.models_folder(tmp_path, "controlnet") / "union.safetensors")

    def prompt(control_type: str) -> dict:
        return {
            "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "xl.safetensors"}},
            "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cube", "clip": ["ckpt", 1]}},
            "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
            "hint": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                            "color": 0x3366ff}},
            "cn": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "union.safetensors"}},
            "type": {"class_type": "SetUnionControlNetType", "inputs": {"control_net": ["cn", 0],
                                                                        "type": control_type}},
            "apply": {"class_type": "ControlNetApplyAdvanced", "inputs": {
                "positive": ["pos", 0], "negative": ["neg", 0], "control_net": ["type", 0], "image": ["hint", 0],
                "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}},
            "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "ks": {"class_type": "KSampler", "inputs": {"model": ["ckpt", 0], "seed": 1, "steps": 2, "cfg": 4.0,
                                                        "sampler_name": "euler", "scheduler": "normal",
                                                        "positive": ["apply", 0], "negative": ["apply", 1],
                                                        "latent_image": ["empty", 0], "denoise": 1.0}},
            "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["ckpt", 2]}},
            "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "union"}},
        }

    def pixels(outputs: dict) -> np.ndarray:
        (entry,) = outputs["save"]["images"]
        with Image.open(tmp_path / "output" / entry["subfolder"] / entry["filename"]) as image:
            return np.array(image)

    try:
        async with fixtures.core_comfy(tmp_path) as client:
            auto = pixels(await client.queue_prompt(prompt("auto")))
            depth = pixels(await client.queue_prompt(prompt("depth")))
            depth_again = pixels(await client.queue_prompt(prompt("depth")))
            canny = pixels(await client.queue_prompt(prompt("canny/lineart/anime_lineart/mlsd")))
            # The original union model knows six kinds; tile and repaint need the ProMax one.
            with pytest.raises(PromptExecutionError, match="tile is beyond the 6 kinds .* ProMax"):
                await client.queue_prompt(prompt("tile"))
    finally:
        fixtures.stop_kernel()
    assert np.array_equal(depth, depth_again)
    assert not np.array_equal(auto, depth) and not np.array_equal(depth, canny)
