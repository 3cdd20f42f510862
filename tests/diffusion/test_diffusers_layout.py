"""Files in the diffusers layout: UNets (UNETLoader), ControlNets and T2I-Adapters (full and light), made by the
``diffusers`` library itself with tiny configs, load through our loaders and compute what diffusers computes."""
from __future__ import annotations

from pathlib import Path

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
