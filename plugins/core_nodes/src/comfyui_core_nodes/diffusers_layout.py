"""Files saved in the diffusers layout, renamed to the original single-file (LDM) layout the loaders read.

A diffusers UNet (``conv_in``, ``down_blocks.N.resnets.M``, ``mid_block``, ``up_blocks``), a diffusers ControlNet
(the same encoder plus ``controlnet_cond_embedding``, ``controlnet_down_blocks``, ``controlnet_mid_block``) and a
diffusers T2I-Adapter (``adapter.body.N.resnets.M``) hold the same tensors as the original files under other names.
The block structure is read from the keys, so any depth of UNet (SD1.x, SD2.x, SDXL and its pruned variants)
renames without a table of known models.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Mapping

from comfyui_core_nodes.loading import ModelFileError
from comfyui_core_nodes.lora import unet_to_diffusers

logger = logging.getLogger(__name__)

UNION_PARTS = ("task_embedding", "transformer_layes.", "spatial_ch_projs.", "control_add_embedding.")


def _count(keys: Any, prefix: str) -> int:
    """How many numbered children ``prefix<N>.`` the keys have."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(match.group(1)) for key in keys if (match := pattern.match(key))}
    return max(found) + 1 if found else 0


def is_diffusers_unet(sd: Mapping[str, Any]) -> bool:
    return "conv_in.weight" in sd and any(key.startswith("down_blocks.") for key in sd)


def is_diffusers_controlnet(sd: Mapping[str, Any]) -> bool:
    return "controlnet_cond_embedding.conv_in.weight" in sd


def unet_structure(sd: Mapping[str, Any], what: str = "UNet", decoder: bool = True) -> dict[str, Any]:
    """The block structure ``unet_to_diffusers`` needs (levels, ResBlocks and transformer depths), from the keys;
    ``decoder=False`` for a ControlNet, which has only the encoder."""
    keys = list(sd)
    num_res_blocks: list[int] = []
    depths: list[int] = []
    for level in range(_count(keys, "down_blocks.")):
        resnets = _count(keys, f"down_blocks.{level}.resnets.")
        num_res_blocks.append(resnets)
        depths += [_count(keys, f"down_blocks.{level}.attentions.{index}.transformer_blocks.")
                   for index in range(resnets)]
    output_depths: list[int] = []
    up_levels = _count(keys, "up_blocks.")
    for up_level in range(up_levels):
        output_depths += [_count(keys, f"up_blocks.{up_level}.attentions.{index}.transformer_blocks.")
                          for index in range(_count(keys, f"up_blocks.{up_level}.resnets."))]
    decoder_blocks = sum(count + 1 for count in num_res_blocks)
    if not decoder:
        # The map still wants one depth per output block.
        output_depths = [0] * decoder_blocks
    elif len(output_depths) != decoder_blocks:
        raise ModelFileError(f"{what}: a diffusers UNet whose decoder (up_blocks: {len(output_depths)} ResBlocks) "
                             f"does not mirror its encoder (down_blocks: {num_res_blocks} ResBlocks per level); "
                             f"the file is incomplete or not a UNet")
    has_middle_transformer = any(key.startswith("mid_block.attentions.0.") for key in keys)
    return {"num_res_blocks": num_res_blocks, "channel_mult": [None] * len(num_res_blocks),
            "transformer_depth": depths,
            # The LDM order lists output blocks from the shallowest; up_blocks start at the deepest.
            "transformer_depth_output": output_depths[::-1],
            "transformer_depth_middle": _count(keys, "mid_block.attentions.0.transformer_blocks.")
            if has_middle_transformer else -1}


def _rename(sd: Mapping[str, Any], module_map: Mapping[str, str], what: str) -> dict[str, Any]:
    renamed: dict[str, Any] = {}
    left_over: list[str] = []
    for key, value in sd.items():
        module, _, parameter = key.rpartition(".")
        target = module_map.get(module)
        if target is None:
            left_over.append(key)
        else:
            renamed[f"{target}.{parameter}"] = value
    if left_over:
        # The strict load that follows reports anything the model needs and did not get.
        logger.warning("%s: %d diffusers keys have no original-layout name and were left out: %s", what,
                       len(left_over), ", ".join(left_over[:8]) + (" ..." if len(left_over) > 8 else ""))
    return renamed


def unet_to_ldm(sd: Mapping[str, Any], what: str = "UNet") -> dict[str, Any]:
    """A diffusers UNet state dict under the original names (``input_blocks.*``, no prefix)."""
    return _rename(sd, unet_to_diffusers(unet_structure(sd, what)), what)


def controlnet_to_ldm(sd: Mapping[str, Any], what: str = "ControlNet") -> dict[str, Any]:
    """A diffusers ControlNet state dict under the original lllyasviel names (no ``control_model.`` prefix)."""
    module_map = dict(unet_to_diffusers(unet_structure(sd, what, decoder=False)))
    module_map["controlnet_mid_block"] = "middle_block_out.0"
    for index in range(_count(sd, "controlnet_down_blocks.")):
        module_map[f"controlnet_down_blocks.{index}"] = f"zero_convs.{index}.0"
    # The hint encoder's convolutions sit at every other index of input_hint_block (SiLUs between them).
    blocks = _count(sd, "controlnet_cond_embedding.blocks.")
    module_map["controlnet_cond_embedding.conv_in"] = "input_hint_block.0"
    for index in range(blocks):
        module_map[f"controlnet_cond_embedding.blocks.{index}"] = f"input_hint_block.{2 * (index + 1)}"
    module_map["controlnet_cond_embedding.conv_out"] = f"input_hint_block.{2 * (blocks + 1)}"
    renamed = _rename({key: value for key, value in sd.items() if not key.startswith(UNION_PARTS)}, module_map, what)
    # A union ControlNet's own parts keep their names, but for the attention's packed input projection.
    renamed.update({key.replace(".attn.in_proj_", ".attn.in_proj."): value
                    for key, value in sd.items() if key.startswith(UNION_PARTS)})
    return renamed


def is_diffusers_t2i_adapter(sd: Mapping[str, Any]) -> bool:
    return any(key.startswith("adapter.body.0.resnets.0.") for key in sd)


def t2i_adapter_to_original(sd: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers T2I-Adapter under the original names: a full one's ``adapter.body.L.resnets.R`` become
    ``body.<2L+R>``; a light one's ``adapter.body.L.resnets.R.conv1`` become ``body.L.body.R.block1``."""
    light = "adapter.body.0.out_conv.weight" in sd
    renamed = {}
    for key, value in sd.items():
        name = key.removeprefix("adapter.")
        resnet = re.match(r"body\.(\d+)\.resnets\.(\d+)\.(.*)", name)
        level = re.match(r"body\.(\d+)\.(.*)", name)
        if light and resnet:
            rest = resnet.group(3).replace("conv1.", "block1.").replace("conv2.", "block2.")
            name = f"body.{resnet.group(1)}.body.{resnet.group(2)}.{rest}"
        elif resnet:
            name = f"body.{2 * int(resnet.group(1)) + int(resnet.group(2))}.{resnet.group(3)}"
        elif level and not light:
            # A level's input convolution belongs to its first ResBlock in the original layout.
            name = f"body.{2 * int(level.group(1))}.{level.group(2)}"
        renamed[name] = value
    return renamed


__all__ = ["controlnet_to_ldm", "is_diffusers_controlnet", "is_diffusers_t2i_adapter", "is_diffusers_unet", "t2i_adapter_to_original",
           "unet_structure", "unet_to_ldm"]
