"""Tiny random-weight checkpoints in the real single-file layouts (SD1.x, SD2.x, SDXL base and refiner).

UNet and VAE keys follow the released files (``model.diffusion_model.*``, ``first_stage_model.*``) with
small channel counts; text encoders come from ``te_fixtures``. ``write_checkpoint`` saves one as
.safetensors (or .ckpt) for the real loaders; ``manifest_state_dict`` builds a full-size architecture
from the key manifests on the meta device.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Union

import pytest
import torch

from comfyui_core_nodes.unet import UNetConfig, UNetModel
from comfyui_core_nodes.vae import AutoencoderKL, VAEConfig

# The team's facts about real model files, kept beside the repository (../shared).
MANIFESTS = Path(__file__).resolve().parents[3] / "shared" / "compat" / "checkpoints"
TEXT_WIDTH = 32  # every tiny text encoder's width
SIZE_EMBEDDING = 256  # SDXL embeds each size/crop number in 256 channels

# Tiny UNets per family: the family's structure (levels, where transformers are, projections, ADM)
# with few channels. SD2/SDXL heads are 64 channels wide, so their attention levels have >= 64.
TINY_UNETS: dict[str, UNetConfig] = {
    "sd1": UNetConfig(model_channels=32, channel_mult=[1, 2], num_res_blocks=[1, 1], transformer_depth=[1, 1],
                      transformer_depth_output=[1, 1, 1, 1], transformer_depth_middle=1, context_dim=TEXT_WIDTH,
                      use_linear_in_transformer=False, num_heads=8, num_head_channels=-1),
    "sd2": UNetConfig(model_channels=64, channel_mult=[1, 2], num_res_blocks=[1, 1], transformer_depth=[1, 1],
                      transformer_depth_output=[1, 1, 1, 1], transformer_depth_middle=1, context_dim=TEXT_WIDTH,
                      use_linear_in_transformer=True, num_heads=-1, num_head_channels=64),
    "sdxl": UNetConfig(model_channels=32, channel_mult=[1, 2, 2], num_res_blocks=[1, 1, 1],
                       transformer_depth=[0, 1, 1], transformer_depth_output=[0, 0, 1, 1, 1, 1],
                       transformer_depth_middle=1, context_dim=2 * TEXT_WIDTH, use_linear_in_transformer=True,
                       adm_in_channels=TEXT_WIDTH + 6 * SIZE_EMBEDDING, num_heads=-1, num_head_channels=64),
    "sdxl_refiner": UNetConfig(model_channels=32, channel_mult=[1, 2, 2, 2], num_res_blocks=[1, 1, 1, 1],
                               transformer_depth=[0, 1, 1, 0], transformer_depth_output=[0, 0, 1, 1, 1, 1, 0, 0],
                               transformer_depth_middle=1, context_dim=TEXT_WIDTH, use_linear_in_transformer=True,
                               adm_in_channels=TEXT_WIDTH + 5 * SIZE_EMBEDDING, num_heads=-1,
                               num_head_channels=64),
    # SD1's full block structure (four levels, two ResBlocks each) with few channels, for T2I-Adapters.
    "sd1_four_levels": UNetConfig(model_channels=32, channel_mult=[1, 2, 4, 4], num_res_blocks=[2, 2, 2, 2],
                                  transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                                  transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                                  transformer_depth_middle=1, context_dim=TEXT_WIDTH, use_linear_in_transformer=False,
                                  num_heads=8, num_head_channels=-1),
    # SD 2.1 unCLIP: SD2's UNet with an ADM input of a noised image embedding (16 wide) and its level.
    "sd2_unclip": UNetConfig(model_channels=64, channel_mult=[1, 1, 1, 1], num_res_blocks=[1, 1, 1, 1],
                             transformer_depth=[1, 1, 1, 0], transformer_depth_output=[1, 1, 1, 1, 1, 1, 0, 0],
                             transformer_depth_middle=1, context_dim=TEXT_WIDTH, use_linear_in_transformer=True,
                             adm_in_channels=2 * 16, num_heads=-1, num_head_channels=64),
}
TEXT_ENCODER_FAMILY = {"sd1_four_levels": "sd1", "sd2_unclip": "sd2"}
TINY_VAE = VAEConfig(ch=32, ch_mult=[1, 1, 1, 1], num_res_blocks=1)


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Values like a trained network's: norm scales near 1, small biases, weights scaled by fan-in."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in sorted(shapes.items()):
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        if len(shape) == 1 and ("norm" in key or key.endswith("in_layers.0.weight")
                                or key.endswith("out_layers.0.weight") or key.endswith("out.0.weight")):
            out[key] = 1.0 + 0.1 * noise if key.endswith(".weight") else 0.05 * noise
        elif len(shape) <= 1:
            out[key] = 0.05 * noise
        else:
            out[key] = noise / math.sqrt(math.prod(shape[1:]))
    return out


def module_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def unet_state_dict(family: str = "sd1", prefix: str = "model.diffusion_model.", seed: int = 0,
                    in_channels: int = 4) -> dict[str, torch.Tensor]:
    config = UNetConfig(**{**TINY_UNETS[family].__dict__, "in_channels": in_channels})
    with torch.device("meta"):
        unet = UNetModel(config)
    return {prefix + key: value for key, value in random_state_dict(module_shapes(unet), seed).items()}


def vae_state_dict(prefix: str = "first_stage_model.", seed: int = 100) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        vae = AutoencoderKL(TINY_VAE)
    return {prefix + key: value for key, value in random_state_dict(module_shapes(vae), seed).items()}


def text_encoder_state_dict(family: str, seed: int = 200) -> dict[str, torch.Tensor]:
    import te_fixtures
    from comfyui_core_nodes.text_encoders import heads_for_width

    family = TEXT_ENCODER_FAMILY.get(family, family)
    heads = heads_for_width(TEXT_WIDTH)
    if family == "sd1":
        return te_fixtures.tiny_clip_l_state_dict("cond_stage_model.transformer.", width=TEXT_WIDTH, seed=seed)
    if family == "sd2":
        return te_fixtures.tiny_open_clip_state_dict("cond_stage_model.model.", TEXT_WIDTH, 2, heads, seed=seed)
    if family == "sdxl":
        return {**te_fixtures.tiny_clip_l_state_dict("conditioner.embedders.0.transformer.", width=TEXT_WIDTH,
                                                     seed=seed),
                **te_fixtures.tiny_open_clip_state_dict("conditioner.embedders.1.model.", TEXT_WIDTH, 2, heads,
                                                        seed=seed + 1)}
    if family == "sdxl_refiner":
        return te_fixtures.tiny_open_clip_state_dict("conditioner.embedders.0.model.", TEXT_WIDTH, 2, heads,
                                                     seed=seed)
    raise ValueError(f"no tiny text encoder for {family!r}")


def checkpoint_state_dict(family: str = "sd1", seed: int = 0, text_encoders: bool = True, vae: bool = True,
                          inpaint: bool = False, v_prediction: bool = False) -> dict[str, torch.Tensor]:
    """A whole single-file checkpoint of ``family`` ("sd1", "sd2", "sdxl", "sdxl_refiner")."""
    sd = unet_state_dict(family, seed=seed, in_channels=9 if inpaint else 4)
    if vae:
        sd.update(vae_state_dict(seed=seed + 100))
    if text_encoders:
        sd.update(text_encoder_state_dict(family, seed=seed + 200))
    if family == "sd2_unclip":
        import te_fixtures

        sd.update(te_fixtures.tiny_clip_vision_state_dict("embedder.model.visual.", projection=16, seed=seed + 300))
    if v_prediction:
        sd["v_pred"] = torch.tensor([])
    return sd


def save_state_dict(sd: dict[str, torch.Tensor], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".safetensors", ".sft"):
        import safetensors.torch

        safetensors.torch.save_file({key: value.contiguous() for key, value in sd.items()}, str(path))
    else:
        torch.save({"state_dict": sd}, str(path))
    return path


def write_checkpoint(path: Union[str, Path], family: str = "sd1", **options: object) -> Path:
    return save_state_dict(checkpoint_state_dict(family, **options), Path(path))


def lora_state_dict(family: str = "sd1", rank: int = 2, seed: int = 300, text_encoder: bool = True,
                    scale: float = 1.0) -> dict[str, torch.Tensor]:
    """A kohya-format LoRA on every attention projection of the tiny UNet (and CLIP-L's MLPs)."""
    from comfyui_core_nodes.detection import model_config_for
    from comfyui_core_nodes.lora import unet_to_diffusers

    unet_sd = unet_state_dict(family, prefix="")
    config = model_config_for(unet_sd)
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for diffusers_name, ldm_name in unet_to_diffusers(config.unet_config).items():
        weight = unet_sd.get(f"{ldm_name}.weight")
        if weight is None or ".attn" not in diffusers_name or weight.ndim != 2:
            continue
        name = "lora_unet_" + diffusers_name.replace(".", "_")
        out[f"{name}.lora_down.weight"] = scale * torch.randn((rank, weight.shape[1]), generator=generator)
        out[f"{name}.lora_up.weight"] = scale * torch.randn((weight.shape[0], rank), generator=generator)
        out[f"{name}.alpha"] = torch.tensor(float(rank))
    if text_encoder:
        for layer in range(2):
            for module, size in (("mlp_fc1", (4 * TEXT_WIDTH, TEXT_WIDTH)), ("mlp_fc2", (TEXT_WIDTH, 4 * TEXT_WIDTH))):
                name = f"lora_te_text_model_encoder_layers_{layer}_{module}"
                out[f"{name}.lora_down.weight"] = scale * torch.randn((rank, size[1]), generator=generator)
                out[f"{name}.lora_up.weight"] = scale * torch.randn((size[0], rank), generator=generator)
                out[f"{name}.alpha"] = torch.tensor(float(rank))
    return out


def controlnet_state_dict(family: str = "sd1", prefix: str = "control_model.", seed: int = 400
                          ) -> dict[str, torch.Tensor]:
    """A ControlNet for the tiny ``family`` UNet in the original lllyasviel layout (RGB hint)."""
    from comfyui_core_nodes.controlnet import ControlNetModel

    with torch.device("meta"):
        control = ControlNetModel(TINY_UNETS[family], hint_channels=3)
    return {prefix + key: value for key, value in random_state_dict(module_shapes(control), seed).items()}


def control_lora_state_dict(family: str = "sd1", rank: int = 2, seed: int = 600) -> dict[str, torch.Tensor]:
    """A Control-LoRA as Stability's files: whole tensors for the ControlNet's own parts (hint encoder, zero
    convolutions) and every 1-D tensor, ``.up``/``.down`` factors for the encoder's matrices and kernels."""
    own_parts = ("input_hint_block.", "zero_convs.", "middle_block_out.")
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {"lora_controlnet": torch.tensor([])}
    for key, value in controlnet_state_dict(family, prefix="", seed=seed).items():
        if key.startswith(own_parts) or value.ndim == 1:
            out[key] = value
        else:
            stem = key.removesuffix(".weight")
            out[f"{stem}.up"] = 0.1 * torch.randn((value.shape[0], rank, *([1] * (value.ndim - 2))),
                                                  generator=generator)
            out[f"{stem}.down"] = 0.1 * torch.randn((rank, *value.shape[1:]), generator=generator)
    return out


def t2i_adapter_state_dict(seed: int = 500) -> dict[str, torch.Tensor]:
    """A full T2I-Adapter for the ``sd1_four_levels`` UNet (widths 32/64/128/128), RGB hint."""
    from comfyui_core_nodes.controlnet import Adapter

    with torch.device("meta"):
        adapter = Adapter([32, 64, 128, 128], nums_rb=2, cin=3 * 64, ksize=1, use_conv=False)
    return random_state_dict(module_shapes(adapter), seed)


def manifest(name: str) -> list[tuple[str, list[int]]]:
    """A released file's keys and shapes; tests skip where the shared manifests are not beside the checkout."""
    path = MANIFESTS / f"{name}.json"
    if not path.is_file():
        pytest.skip(f"{path} is not here")
    return [(key, shape) for key, shape in json.loads(path.read_text())]


def manifest_state_dict(name: str, prefix: str = "", dtype: torch.dtype = torch.float32
                        ) -> dict[str, torch.Tensor]:
    """The manifest's keys (under ``prefix``, which is removed) as empty meta tensors of the right shapes."""
    return {key[len(prefix):]: torch.empty(shape, device="meta",
                                           dtype=torch.int64 if key.endswith("position_ids") else dtype)
            for key, shape in manifest(name) if key.startswith(prefix)}


def models_folder(base: Path, folder: str = "checkpoints") -> Path:
    path = base / "models" / folder
    path.mkdir(parents=True, exist_ok=True)
    return path


def image(height: int = 64, width: int = 64, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """A smooth test IMAGE (B, H, W, 3) in [0, 1]."""
    ys = torch.linspace(0, 1, height)[:, None]
    xs = torch.linspace(0, 1, width)[None, :]
    generator = torch.Generator().manual_seed(seed)
    phases = torch.rand((batch, 3), generator=generator) * 6.28
    channels = [0.5 + 0.5 * torch.sin(6 * xs + 4 * ys + phases[:, c, None, None]) for c in range(3)]
    return torch.stack(channels, dim=-1).float()


__all__ = ["MANIFESTS", "TEXT_WIDTH", "TINY_UNETS", "TINY_VAE", "checkpoint_state_dict", "control_lora_state_dict",
           "controlnet_state_dict",
           "core_comfy", "image", "lora_state_dict", "stop_kernel", "t2i_adapter_state_dict",
           "manifest", "manifest_state_dict", "models_folder", "random_state_dict", "save_state_dict",
           "text_encoder_state_dict", "unet_state_dict", "vae_state_dict", "write_checkpoint"]


def core_comfy(base: Path, **options: object):
    """An embedded client with the core nodes (and samplers, when installed) on a real plugin manager.

    ``base`` holds models/, input/ and output/; ``options`` are configuration values by dest name.
    Call ``stop_kernel()`` after leaving its context.
    """
    from comfy import paths_plugin
    from comfy.client.embedded_comfy_client import Comfy
    from comfy.configuration import default_configuration
    from comfy.plugins import create_plugin_manager

    from comfyui_core_nodes import plugin as core_plugin

    pm = create_plugin_manager(load_entrypoints=False)
    pm.register(paths_plugin, "local_models")
    pm.register(core_plugin, "core_nodes")
    try:
        from comfyui_samplers import plugin as samplers_plugin
    except ImportError:
        samplers_plugin = None
    if samplers_plugin is not None:
        pm.register(samplers_plugin, "samplers")
    configuration = default_configuration(pm)
    configuration.base_directory = str(base)
    configuration.preview_method = "none"
    configuration.update(options)
    return Comfy(configuration, plugin_manager=pm)


def stop_kernel() -> None:
    """Undo what starting a kernel in this process installed (legacy modules, plugin manager, folders)."""
    from comfy import paths
    from comfy.legacy import uninstall_legacy_modules
    from comfy.nodes import registry
    from comfy.plugins import set_plugin_manager

    uninstall_legacy_modules()
    set_plugin_manager(None)
    paths.set_state(None)
    registry.set_current(None)
