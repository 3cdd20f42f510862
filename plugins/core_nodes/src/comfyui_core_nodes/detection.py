"""Which model a state dict holds: a UNet configuration read from its shapes, then a table of families.

``unet_config_from_state_dict`` derives channels, levels, transformer depths, context and ADM widths
from the keys and shapes (so tiny test models are recognised like released ones); ``FAMILIES`` is a
table of small predicates over that configuration, first match wins. Adding a family is adding a row.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import torch

from comfyui_core_nodes import latent_formats
from comfyui_core_nodes.model_base import ModelConfig, ModelType
from comfyui_core_nodes.unet import UNetConfig

UNET_PREFIXES = ("model.diffusion_model.", "")
VAE_PREFIX = "first_stage_model."


class UnknownModelError(ValueError):
    """A state dict no family matches; the message says what was found."""


def _count(keys: Any, pattern: str) -> int:
    regex = re.compile(pattern)
    found = {int(match.group(1)) for key in keys if (match := regex.match(key))}
    return max(found) + 1 if found else 0


def _transformer(sd: Mapping[str, Any], keys: list[str], prefix: str) -> tuple[int, Optional[int], Optional[bool]]:
    """(depth, context_dim, linear projections) of the transformer at ``prefix`` (depth 0 if none)."""
    depth = _count(keys, re.escape(prefix) + r"transformer_blocks\.(\d+)\.")
    if depth == 0:
        return 0, None, None
    context = sd[f"{prefix}transformer_blocks.0.attn2.to_k.weight"].shape[1]
    linear = len(sd[f"{prefix}proj_in.weight"].shape) == 2
    return depth, context, linear


def unet_config_from_state_dict(sd: Mapping[str, Any], prefix: str = "") -> Optional[UNetConfig]:
    """The UNet shape a state dict (keys under ``prefix``) has, or None if it holds no LDM-layout UNet.

    Heads are not visible in shapes; the family sets them afterwards. Works on meta tensors.
    """
    first = f"{prefix}input_blocks.0.0.weight"
    if first not in sd:
        return None
    keys = [key for key in sd if key.startswith(prefix)]
    model_channels, in_channels = sd[first].shape[0], sd[first].shape[1]
    out_key = f"{prefix}out.2.weight"
    adm_key = f"{prefix}label_emb.0.0.weight"
    num_res_blocks: list[int] = []
    channel_mult: list[int] = []
    depths: list[int] = []
    context_dim: Optional[int] = None
    linear = False
    blocks_in_level, level_mult = 0, 0
    for index in range(1, _count(keys, re.escape(prefix) + r"input_blocks\.(\d+)\.")):
        block = f"{prefix}input_blocks.{index}."
        if f"{block}0.op.weight" in sd:
            num_res_blocks.append(blocks_in_level)
            channel_mult.append(level_mult)
            blocks_in_level = 0
            continue
        if f"{block}0.in_layers.0.weight" in sd:
            blocks_in_level += 1
            level_mult = sd[f"{block}0.out_layers.3.weight"].shape[0] // model_channels
            depth, context, is_linear = _transformer(sd, keys, f"{block}1.")
            depths.append(depth)
            if context is not None and context_dim is None:
                context_dim, linear = context, bool(is_linear)
    num_res_blocks.append(blocks_in_level)
    channel_mult.append(level_mult)

    output_count = _count(keys, re.escape(prefix) + r"output_blocks\.(\d+)\.")
    # Listed from the last output block to the first: the UNet pops them in build order.
    output_depths = [_transformer(sd, keys, f"{prefix}output_blocks.{index}.1.")[0]
                     for index in reversed(range(output_count))]
    middle_depth, middle_context, middle_linear = _transformer(sd, keys, f"{prefix}middle_block.1.")
    if middle_depth == 0:
        middle_depth = -1 if f"{prefix}middle_block.0.in_layers.0.weight" in sd else -2
    elif context_dim is None:
        context_dim, linear = middle_context, bool(middle_linear)
    return UNetConfig(in_channels=in_channels, out_channels=sd[out_key].shape[0] if out_key in sd else 4,
                      model_channels=model_channels, num_res_blocks=num_res_blocks, channel_mult=channel_mult,
                      transformer_depth=depths, transformer_depth_output=output_depths,
                      transformer_depth_middle=middle_depth, context_dim=context_dim,
                      use_linear_in_transformer=linear,
                      adm_in_channels=sd[adm_key].shape[1] if adm_key in sd else None)


@dataclass(frozen=True)
class Family:
    """A model family: how to recognise its UNet and what it needs besides the shapes."""
    name: str
    description: str
    matches: Callable[[UNetConfig], bool]
    latent_format: Callable[[], latent_formats.LatentFormat]
    model_class: str = "base"
    num_heads: int = -1
    num_head_channels: int = 64
    attn_precision: Optional[torch.dtype] = None
    memory_usage_factor: float = 1.0
    sampling_settings: dict[str, Any] = field(default_factory=dict)
    # The text encoders' family name, when it differs (an unCLIP model has SD2's encoder).
    text_encoders: Optional[str] = None
    # Where a checkpoint of this family keeps its CLIP vision tower, if it has one.
    clip_vision_prefix: Optional[str] = None


FAMILIES: tuple[Family, ...] = (
    Family("sdxl", "SDXL base", lambda c: c.adm_in_channels is not None and len(c.channel_mult) == 3,
           latent_formats.SDXL, model_class="sdxl", memory_usage_factor=0.8),
    Family("sdxl_refiner", "SDXL refiner",
           lambda c: c.adm_in_channels is not None and len(c.channel_mult) == 4 and c.transformer_depth[0] == 0,
           latent_formats.SDXL, model_class="sdxl_refiner"),
    Family("sd2_unclip", "Stable Diffusion 2.1 unCLIP",
           lambda c: (c.adm_in_channels is not None and len(c.channel_mult) == 4 and c.transformer_depth[0] > 0
                      and c.use_linear_in_transformer),
           latent_formats.SD15, model_class="sd2_unclip", attn_precision=torch.float32, text_encoders="sd2",
           clip_vision_prefix="embedder.model.visual."),
    Family("sd2", "Stable Diffusion 2.x", lambda c: c.adm_in_channels is None and c.use_linear_in_transformer,
           latent_formats.SD15, attn_precision=torch.float32),
    Family("sd1", "Stable Diffusion 1.x", lambda c: c.adm_in_channels is None and not c.use_linear_in_transformer,
           latent_formats.SD15, num_heads=8, num_head_channels=-1),
)
FAMILIES_BY_NAME = {family.name: family for family in FAMILIES}


def describe(config: UNetConfig) -> str:
    return (f"in_channels={config.in_channels}, model_channels={config.model_channels}, "
            f"channel_mult={config.channel_mult}, transformer_depth={config.transformer_depth}, "
            f"context_dim={config.context_dim}, linear_projections={config.use_linear_in_transformer}, "
            f"adm_in_channels={config.adm_in_channels}")


def detect_family(config: UNetConfig) -> Family:
    for family in FAMILIES:
        if family.matches(config):
            return family
    known = ", ".join(family.description for family in FAMILIES)
    raise UnknownModelError(f"unrecognised UNet ({describe(config)}); supported: {known}")


def _v_prediction(sd: Mapping[str, Any], prefix: str, family: Family, config: UNetConfig) -> bool:
    if "v_pred" in sd:
        return True
    if family.name not in ("sd2", "sd2_unclip") or config.in_channels != 4:
        return False
    # SD 2.x 768-v files carry no marker; ComfyUI tells them by this bias's spread.
    bias = sd.get(f"{prefix}output_blocks.11.1.transformer_blocks.0.norm1.bias")
    if bias is None or bias.is_meta:
        return False
    return bool(torch.std(bias.float(), unbiased=False) > 0.09)


def model_config_for(sd: Mapping[str, Any], prefix: str = "") -> Optional[ModelConfig]:
    """The model a state dict's UNet (under ``prefix``) is, or None without a UNet there."""
    unet = unet_config_from_state_dict(sd, prefix)
    if unet is None:
        return None
    family = detect_family(unet)
    unet.num_heads, unet.num_head_channels, unet.attn_precision = (family.num_heads, family.num_head_channels,
                                                                   family.attn_precision)
    sampling_settings = dict(family.sampling_settings)
    if "ztsnr" in sd:
        sampling_settings["zsnr"] = True
    return ModelConfig(family=family.name, unet=unet, latent_format=family.latent_format(),
                       model_type=ModelType.V_PREDICTION if _v_prediction(sd, prefix, family, unet) else ModelType.EPS,
                       model_class=family.model_class, sampling_settings=sampling_settings,
                       memory_usage_factor=family.memory_usage_factor)


def detect_unet_config(state_dict: Mapping[str, Any], key_prefix: str = "", metadata: Any = None
                       ) -> Optional[dict[str, Any]]:
    """ComfyUI's name: the UNet configuration as a dict, or None."""
    config = model_config_for(state_dict, key_prefix)
    return config.unet_config if config is not None else None


def model_config_from_unet(state_dict: Mapping[str, Any], unet_key_prefix: str = "",
                           use_base_if_no_match: bool = False, metadata: Any = None) -> Optional[ModelConfig]:
    """ComfyUI's name for ``model_config_for``."""
    return model_config_for(state_dict, unet_key_prefix)


def find_unet_prefix(sd: Mapping[str, Any]) -> Optional[str]:
    for prefix in UNET_PREFIXES:
        if f"{prefix}input_blocks.0.0.weight" in sd:
            return prefix
    return None


def summarize_keys(sd: Mapping[str, Any], limit: int = 6) -> str:
    """The top-level key groups of a state dict, for error messages."""
    groups: dict[str, int] = {}
    for key in sd:
        head = ".".join(key.split(".")[:2])
        groups[head] = groups.get(head, 0) + 1
    shown = sorted(groups.items(), key=lambda item: -item[1])[:limit]
    more = f", and {len(groups) - limit} more groups" if len(groups) > limit else ""
    return f"{len(sd)} keys: " + ", ".join(f"{head}.* ({count})" for head, count in shown) + more


# (predicate over the keys, what such a file is and which node loads it), for errors on wrong files.
OTHER_KINDS: tuple[tuple[Callable[[set[str]], bool], str], ...] = (
    (lambda keys: "encoder.conv_in.weight" in keys and "decoder.conv_in.weight" in keys, "a VAE (use VAELoader)"),
    (lambda keys: any(key.startswith(("lora_unet_", "lora_te", "lycoris_")) or ".lora_down." in key
                      or ".lora_A." in key for key in keys), "a LoRA (use LoraLoader)"),
    (lambda keys: any("zero_convs." in key or key.startswith("controlnet_") for key in keys),
     "a ControlNet (use ControlNetLoader)"),
    (lambda keys: any(key.startswith(("text_model.", "transformer.resblocks.")) for key in keys)
     or "token_embedding.weight" in keys, "a text encoder (use CLIPLoader)"),
)


def guess_other_kind(sd: Mapping[str, Any]) -> Optional[str]:
    """What a file that is not a diffusion model seems to be, if recognisable."""
    keys = set(sd)
    return next((kind for matches, kind in OTHER_KINDS if matches(keys)), None)


__all__ = ["FAMILIES", "FAMILIES_BY_NAME", "Family", "UnknownModelError", "describe", "detect_family",
           "detect_unet_config", "model_config_from_unet",
           "find_unet_prefix", "guess_other_kind", "model_config_for", "summarize_keys",
           "unet_config_from_state_dict"]
