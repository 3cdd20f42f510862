"""Full-size random-weight model files for the differential test against upstream ComfyUI.

Upstream ComfyUI recognises only the released architectures (SD1.5's 320-channel UNet, SDXL's exact
transformer depths, fixed text-encoder sizes), so these files have the real families' keys and shapes,
filled with deterministic values in a trained network's ranges (``fixtures.random_state_dict``'s rules)
and stored as fp16 (both programs read the very same file). Each tensor draws from a generator seeded by
its own key, so a file's bytes do not depend on dict order. ``write_models`` writes a ``base/models``
tree and the input image; ``file_sha256`` gives the hashes the reference records.
"""
from __future__ import annotations

import hashlib
import math
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

import fixtures
import te_fixtures
from comfyui_core_nodes.unet import UNetConfig, UNetModel
from comfyui_core_nodes.vae import AutoencoderKL, VAEConfig

STORED_DTYPE = torch.float16
INPUT_IMAGE = "upstream_parity.png"

SD15_UNET = UNetConfig()  # UNetConfig's defaults are SD 1.5's
SD21_UNET = replace(SD15_UNET, context_dim=1024, use_linear_in_transformer=True, num_heads=-1,
                    num_head_channels=64)
SDXL_UNET = UNetConfig(model_channels=320, channel_mult=[1, 2, 4], num_res_blocks=[2, 2, 2],
                       transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
                       transformer_depth_middle=10, context_dim=2048, use_linear_in_transformer=True,
                       adm_in_channels=2816, num_heads=-1, num_head_channels=64)
SDXL_REFINER_UNET = UNetConfig(model_channels=384, channel_mult=[1, 2, 4, 4], num_res_blocks=[2, 2, 2, 2],
                               transformer_depth=[0, 0, 4, 4, 4, 4, 0, 0],
                               transformer_depth_output=[0, 0, 0, 4, 4, 4, 4, 4, 4, 0, 0, 0],
                               transformer_depth_middle=4, context_dim=1280, use_linear_in_transformer=True,
                               adm_in_channels=2560, num_heads=-1, num_head_channels=64)
# SD 2.x 768-v files carry no marker: ComfyUI calls an SD2 UNet v-prediction when this bias's standard
# deviation exceeds 0.09 (trained 768-v weights do; random norm biases have 0.05).
SD2_V_PREDICTION_KEY = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"


def keyed_state_dict(shapes: dict[str, tuple[int, ...]], seed: int, prefix: str = "") -> dict[str, torch.Tensor]:
    """``fixtures.random_state_dict``'s values, each key from its own generator, stored as fp16."""
    out = {}
    for key, shape in shapes.items():
        key_seed = seed * 7919 + zlib.crc32(key.encode())
        out[prefix + key] = fixtures.random_state_dict({key: shape}, key_seed)[key].to(STORED_DTYPE)
    return out


def _module_state_dict(build: Callable[[], torch.nn.Module], seed: int, prefix: str) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        module = build()
    return keyed_state_dict(fixtures.module_shapes(module), seed, prefix)


def _stored(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value if key.endswith("position_ids") else value.to(STORED_DTYPE) for key, value in sd.items()}


def clip_l(prefix: str, seed: int) -> dict[str, torch.Tensor]:
    return _stored(te_fixtures.tiny_clip_l_state_dict(prefix, width=768, layers=12, seed=seed))


def open_clip(prefix: str, width: int, layers: int, seed: int) -> dict[str, torch.Tensor]:
    from comfyui_core_nodes.text_encoders import heads_for_width

    return _stored(te_fixtures.tiny_open_clip_state_dict(prefix, width, layers, heads_for_width(width), seed=seed))


def unet(config: UNetConfig, seed: int = 0, in_channels: int = 4) -> dict[str, torch.Tensor]:
    return _module_state_dict(lambda: UNetModel(replace(config, in_channels=in_channels)), seed,
                              "model.diffusion_model.")


def vae(seed: int = 100) -> dict[str, torch.Tensor]:
    return _module_state_dict(lambda: AutoencoderKL(VAEConfig()), seed, "first_stage_model.")


def sd15() -> dict[str, torch.Tensor]:
    return {**unet(SD15_UNET), **vae(), **clip_l("cond_stage_model.transformer.", seed=200)}


def sd15_inpainting() -> dict[str, torch.Tensor]:
    """SD1.5 inpainting: the UNet also takes the mask and the masked image's latent (9 input channels)."""
    return {**unet(SD15_UNET, seed=5, in_channels=9), **vae(), **clip_l("cond_stage_model.transformer.", seed=200)}


def sd21_768v() -> dict[str, torch.Tensor]:
    sd = {**unet(SD21_UNET, seed=10), **vae(), **open_clip("cond_stage_model.model.", 1024, 24, seed=210)}
    sd[SD2_V_PREDICTION_KEY] = sd[SD2_V_PREDICTION_KEY] * 4
    return sd


def sdxl_base() -> dict[str, torch.Tensor]:
    return {**unet(SDXL_UNET, seed=20), **vae(seed=120), **clip_l("conditioner.embedders.0.transformer.", seed=220),
            **open_clip("conditioner.embedders.1.model.", 1280, 32, seed=221)}


def sdxl_refiner() -> dict[str, torch.Tensor]:
    return {**unet(SDXL_REFINER_UNET, seed=30), **vae(seed=120),
            **open_clip("conditioner.embedders.0.model.", 1280, 32, seed=230)}


def controlnet_sd15() -> dict[str, torch.Tensor]:
    """An SD1.5 ControlNet in the original lllyasviel layout (``control_model.*``, RGB hint)."""
    from comfyui_core_nodes.controlnet import ControlNetModel

    return _module_state_dict(lambda: ControlNetModel(SD15_UNET, hint_channels=3), 400, "control_model.")


def t2i_adapter_sd15() -> dict[str, torch.Tensor]:
    """A full SD1.5 T2I-Adapter (TencentARC v1 layout, RGB input unshuffled to 192 channels)."""
    from comfyui_core_nodes.controlnet import Adapter

    return _module_state_dict(lambda: Adapter([320, 640, 1280, 1280], nums_rb=2, cin=3 * 64, ksize=1,
                                              use_conv=False), 500, "")


def control_lora_sd15(rank: int = 8, seed: int = 700) -> dict[str, torch.Tensor]:
    """A Control-LoRA for SD1.5 as Stability's files are made: whole tensors for the hint encoder, the zero
    convolutions and every 1-D tensor, ``.up``/``.down`` factors for the encoder's matrices and kernels (applied
    to the sampled model's own weights), and the ``lora_controlnet`` marker."""
    whole = controlnet_sd15()
    own_parts = ("input_hint_block.", "zero_convs.", "middle_block_out.")
    generator = torch.Generator().manual_seed(seed)
    out = {"lora_controlnet": torch.tensor([], dtype=STORED_DTYPE)}
    for key, value in whole.items():
        name = key.removeprefix("control_model.")
        if name.startswith(own_parts) or value.ndim == 1:
            out[name] = value
        else:
            stem = name.removesuffix(".weight")
            fan_in = math.prod(value.shape[1:])
            out[f"{stem}.up"] = (torch.randn((value.shape[0], rank, *([1] * (value.ndim - 2))), generator=generator)
                                 / rank ** 0.5).to(STORED_DTYPE)
            out[f"{stem}.down"] = (torch.randn((rank, *value.shape[1:]), generator=generator)
                                   / fan_in ** 0.5).to(STORED_DTYPE)
    return out


def lora_sd15(rank: int = 4, seed: int = 600) -> dict[str, torch.Tensor]:
    """A kohya LoRA for SD1.5 on sd-scripts' default targets: every Linear/1x1 conv in the UNet's
    transformers and CLIP-L's attention and MLP projections."""
    from comfyui_core_nodes.lora import unet_to_diffusers

    with torch.device("meta"):
        unet_shapes = fixtures.module_shapes(UNetModel(SD15_UNET))
    targets: dict[str, tuple[int, ...]] = {}
    for diffusers_name, ldm_name in unet_to_diffusers(SD15_UNET.__dict__).items():
        shape = unet_shapes.get(f"{ldm_name}.weight")
        if ".attentions." in diffusers_name and shape is not None and len(shape) in (2, 4):
            targets["lora_unet_" + diffusers_name.replace(".", "_")] = shape
    for layer in range(12):
        name = f"lora_te_text_model_encoder_layers_{layer}_"
        for projection in ("q_proj", "k_proj", "v_proj", "out_proj"):
            targets[f"{name}self_attn_{projection}"] = (768, 768)
        targets[f"{name}mlp_fc1"] = (3072, 768)
        targets[f"{name}mlp_fc2"] = (768, 3072)
    out = {}
    for name, shape in targets.items():
        generator = torch.Generator().manual_seed(seed * 7919 + zlib.crc32(name.encode()))
        kernel = (1, 1) if len(shape) == 4 else ()
        # up @ down has entries like the weight's own (1/sqrt(fan-in)): a strong but sane change.
        down = torch.randn((rank, shape[1], *kernel), generator=generator) / shape[1] ** 0.5
        up = torch.randn((shape[0], rank, *kernel), generator=generator) / rank ** 0.5
        out[f"{name}.lora_down.weight"] = down.to(STORED_DTYPE)
        out[f"{name}.lora_up.weight"] = up.to(STORED_DTYPE)
        out[f"{name}.alpha"] = torch.tensor(float(rank), dtype=STORED_DTYPE)
    return out


@dataclass(frozen=True)
class ModelFile:
    build: Callable[[], dict[str, torch.Tensor]]
    place: str  # under models/
    manifest: str  # the shared key manifest it must match


MODEL_FILES: dict[str, ModelFile] = {
    "sd15": ModelFile(sd15, "checkpoints/sd15.safetensors", "sd15"),
    "sd15_inpainting": ModelFile(sd15_inpainting, "checkpoints/sd15_inpainting.safetensors", "sd15_inpainting"),
    "sd21_768v": ModelFile(sd21_768v, "checkpoints/sd21_768v.safetensors", "sd21_768v"),
    "sdxl_base": ModelFile(sdxl_base, "checkpoints/sdxl_base.safetensors", "sdxl_base"),
    "sdxl_refiner": ModelFile(sdxl_refiner, "checkpoints/sdxl_refiner.safetensors", "sdxl_refiner"),
    "controlnet_sd15": ModelFile(controlnet_sd15, "controlnet/controlnet_sd15.safetensors", "controlnet_sd15"),
    "t2i_adapter_sd15": ModelFile(t2i_adapter_sd15, "controlnet/t2i_adapter_sd15.safetensors", ""),
    "lora_sd15": ModelFile(lora_sd15, "loras/lora_sd15.safetensors", "lora_sd15_kohya"),
    "control_lora_sd15": ModelFile(control_lora_sd15, "controlnet/control_lora_sd15.safetensors", ""),
}


def write_model(name: str, base: Path) -> Path:
    model = MODEL_FILES[name]
    path = base / "models" / model.place
    if not path.is_file():
        fixtures.save_state_dict(model.build(), path)
    return path


def write_input_image(base: Path) -> Path:
    """A smooth RGBA picture whose alpha is 0 in a square (LoadImage's mask is 1 - alpha there)."""
    import numpy as np
    from PIL import Image

    rgb = (fixtures.image(64, 64, seed=3)[0].numpy() * 255).round().astype(np.uint8)
    alpha = np.full((64, 64, 1), 255, dtype=np.uint8)
    alpha[16:48, 24:56] = 0
    path = base / "input" / INPUT_IMAGE
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([rgb, alpha], axis=-1), mode="RGBA").save(path)
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()
