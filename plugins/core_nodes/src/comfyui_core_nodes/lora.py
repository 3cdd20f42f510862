"""LoRA-family weight patches (LoRA/LoCon, LoHa, LoKr, plain diffs) in kohya and diffusers key formats.

A LoRA file's modules are named after the diffusers UNet (``lora_unet_down_blocks_0_attentions_0_...``,
``unet.down_blocks.0...``) or the LDM one; ``model_lora_keys_unet`` maps every accepted name to our
weight keys. ``load_lora`` turns a file into patches, which ``ModelPatcher.add_patches`` stores and
``calculate_weight`` applies when the model is loaded. Text-encoder names come from the text encoders'
own key map.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Optional

import torch

from comfyui_core_nodes import model_management

logger = logging.getLogger(__name__)

# -- patch adapters: one class per format, tried in order ------------------------------------------------


def _cast(tensor: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return model_management.cast_to_device(tensor, weight.device, dtype)


def weight_decompose(dora_scale: torch.Tensor, weight: torch.Tensor, diff: torch.Tensor, alpha: float,
                     strength: float, intermediate_dtype: torch.dtype, function: Callable) -> torch.Tensor:
    """DoRA: apply the direction change, then rescale each output (or input) column to the learned magnitude."""
    dora_scale = _cast(dora_scale, weight, intermediate_dtype)
    diff = diff * alpha
    calculated = weight + function(diff).type(weight.dtype)
    if dora_scale.shape[0] == calculated.shape[0]:
        norm = weight.reshape(weight.shape[0], -1).norm(dim=1, keepdim=True).reshape(
            weight.shape[0], *[1] * (weight.dim() - 1))
    else:
        norm = calculated.transpose(0, 1).reshape(calculated.shape[1], -1).norm(dim=1, keepdim=True).reshape(
            calculated.shape[1], *[1] * (calculated.dim() - 1)).transpose(0, 1)
    norm = norm + torch.finfo(weight.dtype).eps
    calculated *= (dora_scale / norm).type(weight.dtype)
    if strength != 1.0:
        calculated -= weight
        weight += strength * calculated
    else:
        weight[:] = calculated
    return weight


class WeightAdapter:
    """A patch computed from a few tensors of a LoRA-family file."""
    name = ""

    def __init__(self, loaded_keys: set[str], weights: tuple):
        self.loaded_keys = loaded_keys
        self.weights = weights

    @classmethod
    def load(cls, prefix: str, lora: Mapping[str, torch.Tensor], alpha: Optional[float],
             dora_scale: Optional[torch.Tensor]) -> Optional["WeightAdapter"]:
        raise NotImplementedError

    def diff(self, weight: torch.Tensor, intermediate_dtype: torch.dtype) -> tuple[torch.Tensor, float]:
        """The weight difference (shaped like ``weight``) and its alpha scale."""
        raise NotImplementedError

    @property
    def dora_scale(self) -> Optional[torch.Tensor]:
        return None

    def calculate_weight(self, weight: torch.Tensor, key: str, strength: float, strength_model: float,
                         offset: Any, function: Callable, intermediate_dtype: torch.dtype = torch.float32
                         ) -> torch.Tensor:
        diff, alpha = self.diff(weight, intermediate_dtype)
        if self.dora_scale is not None:
            return weight_decompose(self.dora_scale, weight, diff, alpha, strength, intermediate_dtype, function)
        weight += function(((strength * alpha) * diff).type(weight.dtype))
        return weight


# Names of (up, down, mid) in the LoRA formats in circulation.
_LORA_NAMES = (
    ("{}.lora_up.weight", "{}.lora_down.weight", "{}.lora_mid.weight"),  # kohya, LoCon
    ("{}_lora.up.weight", "{}_lora.down.weight", None),  # old diffusers
    ("{}.lora_B.weight", "{}.lora_A.weight", None),  # peft
    ("{}.lora.up.weight", "{}.lora.down.weight", None),
    ("{}.lora_linear_layer.up.weight", "{}.lora_linear_layer.down.weight", None),  # transformers
)


class LoRAAdapter(WeightAdapter):
    """up @ down (@ mid for LoCon's tucker form), scaled by alpha / rank."""
    name = "lora"

    @classmethod
    def load(cls, prefix: str, lora: Mapping[str, torch.Tensor], alpha: Optional[float],
             dora_scale: Optional[torch.Tensor]) -> Optional["LoRAAdapter"]:
        for up, down, mid in _LORA_NAMES:
            up_key, down_key = up.format(prefix), down.format(prefix)
            if up_key in lora:
                keys = {up_key, down_key}
                mid_tensor = None
                if mid is not None and mid.format(prefix) in lora:
                    mid_tensor = lora[mid.format(prefix)]
                    keys.add(mid.format(prefix))
                return cls(keys, (lora[up_key], lora[down_key], alpha, mid_tensor, dora_scale))
        return None

    @property
    def dora_scale(self) -> Optional[torch.Tensor]:
        return self.weights[4]

    def diff(self, weight: torch.Tensor, intermediate_dtype: torch.dtype) -> tuple[torch.Tensor, float]:
        up, down, alpha, mid, _ = self.weights
        up, down = _cast(up, weight, intermediate_dtype), _cast(down, weight, intermediate_dtype)
        scale = alpha / down.shape[0] if alpha is not None else 1.0
        if mid is not None:
            mid = _cast(mid, weight, intermediate_dtype)
            shape = [down.shape[1], down.shape[0], mid.shape[2], mid.shape[3]]
            down = torch.mm(down.transpose(0, 1).flatten(start_dim=1),
                            mid.transpose(0, 1).flatten(start_dim=1)).reshape(shape).transpose(0, 1)
        return torch.mm(up.flatten(start_dim=1), down.flatten(start_dim=1)).reshape(weight.shape), scale


def _tucker(core: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return torch.einsum("i j k l, j r, i p -> p r k l", core, b, a)


class LoHaAdapter(WeightAdapter):
    """Hadamard product of two low-rank products (LyCORIS LoHa), optionally CP-decomposed."""
    name = "loha"

    @classmethod
    def load(cls, prefix: str, lora: Mapping[str, torch.Tensor], alpha: Optional[float],
             dora_scale: Optional[torch.Tensor]) -> Optional["LoHaAdapter"]:
        names = {part: f"{prefix}.hada_{part}" for part in ("w1_a", "w1_b", "w2_a", "w2_b", "t1", "t2")}
        if names["w1_a"] not in lora:
            return None
        keys = {names[part] for part in ("w1_a", "w1_b", "w2_a", "w2_b")}
        t1 = t2 = None
        if names["t1"] in lora:
            t1, t2 = lora[names["t1"]], lora[names["t2"]]
            keys |= {names["t1"], names["t2"]}
        return cls(keys, (lora[names["w1_a"]], lora[names["w1_b"]], alpha, lora[names["w2_a"]],
                          lora[names["w2_b"]], t1, t2, dora_scale))

    @property
    def dora_scale(self) -> Optional[torch.Tensor]:
        return self.weights[7]

    def diff(self, weight: torch.Tensor, intermediate_dtype: torch.dtype) -> tuple[torch.Tensor, float]:
        w1a, w1b, alpha, w2a, w2b, t1, t2, _ = (
            _cast(value, weight, intermediate_dtype) if isinstance(value, torch.Tensor) else value
            for value in self.weights)
        scale = alpha / w1b.shape[0] if alpha is not None else 1.0
        if t1 is not None:
            first, second = _tucker(t1, w1b, w1a), _tucker(t2, w2b, w2a)
        else:
            first, second = torch.mm(w1a, w1b), torch.mm(w2a, w2b)
        return (first * second).reshape(weight.shape), scale


class LoKrAdapter(WeightAdapter):
    """Kronecker product of two (possibly low-rank) factors (LyCORIS LoKr)."""
    name = "lokr"
    _PARTS = ("w1", "w2", "w1_a", "w1_b", "w2_a", "w2_b", "t2")

    @classmethod
    def load(cls, prefix: str, lora: Mapping[str, torch.Tensor], alpha: Optional[float],
             dora_scale: Optional[torch.Tensor]) -> Optional["LoKrAdapter"]:
        found = {part: lora.get(f"{prefix}.lokr_{part}") for part in cls._PARTS}
        if all(found[part] is None for part in ("w1", "w2", "w1_a", "w2_a")):
            return None
        keys = {f"{prefix}.lokr_{part}" for part, value in found.items() if value is not None}
        return cls(keys, (found["w1"], found["w2"], alpha, found["w1_a"], found["w1_b"], found["w2_a"],
                          found["w2_b"], found["t2"], dora_scale))

    @property
    def dora_scale(self) -> Optional[torch.Tensor]:
        return self.weights[8]

    def diff(self, weight: torch.Tensor, intermediate_dtype: torch.dtype) -> tuple[torch.Tensor, float]:
        w1, w2, alpha, w1_a, w1_b, w2_a, w2_b, t2, _ = (
            _cast(value, weight, intermediate_dtype) if isinstance(value, torch.Tensor) else value
            for value in self.weights)
        rank = None
        if w1 is None:
            rank = w1_b.shape[0]
            w1 = torch.mm(w1_a, w1_b)
        if w2 is None:
            rank = w2_b.shape[0]
            w2 = torch.mm(w2_a, w2_b) if t2 is None else _tucker(t2, w2_b, w2_a)
        if w2.ndim == 4:
            w1 = w1.unsqueeze(2).unsqueeze(2)
        scale = alpha / rank if alpha is not None and rank is not None else 1.0
        return torch.kron(w1, w2).reshape(weight.shape), scale


ADAPTERS: tuple[type[WeightAdapter], ...] = (LoRAAdapter, LoHaAdapter, LoKrAdapter)


def load_lora(lora: Mapping[str, torch.Tensor], to_load: Mapping[str, Any], log_missing: bool = True,
              lora_name: Optional[str] = None) -> dict[Any, Any]:
    """Patches for the model keys in ``to_load`` (LoRA module name -> model weight key)."""
    patches: dict[Any, Any] = {}
    loaded: set[str] = set()
    for prefix, target in to_load.items():
        alpha_key, dora_key = f"{prefix}.alpha", f"{prefix}.dora_scale"
        alpha = lora[alpha_key].item() if alpha_key in lora else None
        dora_scale = lora.get(dora_key)
        loaded |= {key for key in (alpha_key, dora_key) if key in lora}
        for adapter_class in ADAPTERS:
            adapter = adapter_class.load(prefix, lora, alpha, dora_scale)
            if adapter is not None:
                patches[target] = adapter
                loaded |= adapter.loaded_keys
                break
        target_key = target[0] if isinstance(target, tuple) else target
        bias_key = f"{target_key[:-len('.weight')]}.bias" if target_key.endswith(".weight") else None
        for suffix, kind in ((".w_norm", "diff"), (".diff", "diff"), (".set_weight", "set")):
            value = lora.get(prefix + suffix)
            if value is not None:
                patches[target] = (kind, (value,))
                loaded.add(prefix + suffix)
        for suffix in (".b_norm", ".diff_b"):
            value = lora.get(prefix + suffix)
            if value is not None and bias_key is not None:
                patches[bias_key] = ("diff", (value,))
                loaded.add(prefix + suffix)
    if log_missing:
        unused = [key for key in lora if key not in loaded]
        if unused:
            logger.warning("[%s] %d of %d LoRA keys matched nothing in the model: %s", lora_name or "lora",
                           len(unused), len(lora), unused[:10])
    return patches


def calculate_weight(patches: list, weight: torch.Tensor, key: str,
                     intermediate_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``weight`` (a float copy) with ``patches`` applied in order, as ``ModelPatcher`` stores them."""
    for strength, value, strength_model, offset, function in patches:
        function = function if function is not None else (lambda tensor: tensor)
        whole = None
        if offset is not None:
            whole, weight = weight, weight.narrow(offset[0], offset[1], offset[2])
        if strength_model != 1.0:
            weight *= strength_model
        if isinstance(value, list):
            # Another model's weight with its own patches (model merging): compute it first.
            base, convert = value[0][0], value[0][1]
            computed = convert(model_management.cast_to_device(base, weight.device, intermediate_dtype, copy=True),
                               inplace=True)
            value = (calculate_weight(value[1:], computed, key, intermediate_dtype),)
        if isinstance(value, WeightAdapter):
            weight = value.calculate_weight(weight, key, strength, strength_model, offset, function,
                                            intermediate_dtype)
        else:
            kind, data = ("diff", value) if len(value) == 1 else (value[0], value[1])
            if kind == "diff":
                diff = data[0]
                if strength != 0.0:
                    if diff.shape != weight.shape:
                        logger.warning("LoRA patch for %s has shape %s, the weight %s; not applied", key,
                                       tuple(diff.shape), tuple(weight.shape))
                    else:
                        weight += function(strength * model_management.cast_to_device(diff, weight.device,
                                                                                       weight.dtype))
            elif kind == "set":
                weight.copy_(data[0])
            else:
                logger.warning("unknown patch type %r for %s", kind, key)
        if whole is not None:
            weight = whole
    return weight


# -- key maps --------------------------------------------------------------------------------------------

_RESNET = {"in_layers.2": "conv1", "emb_layers.1": "time_emb_proj", "out_layers.3": "conv2",
           "skip_connection": "conv_shortcut", "in_layers.0": "norm1", "out_layers.0": "norm2"}
_TRANSFORMER_SELF = ("proj_in", "proj_out", "norm")
_TRANSFORMER_BLOCK = ("norm1", "norm2", "norm3", "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                      "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")
_BASIC = (("label_emb.0.0", "class_embedding.linear_1"), ("label_emb.0.2", "class_embedding.linear_2"),
          ("label_emb.0.0", "add_embedding.linear_1"), ("label_emb.0.2", "add_embedding.linear_2"),
          ("input_blocks.0.0", "conv_in"), ("out.0", "conv_norm_out"), ("out.2", "conv_out"),
          ("time_embed.0", "time_embedding.linear_1"), ("time_embed.2", "time_embedding.linear_2"))


def unet_to_diffusers(unet_config: Mapping[str, Any]) -> dict[str, str]:
    """diffusers UNet2DConditionModel module name -> LDM module name (no ``.weight``), for this UNet."""
    mapping: dict[str, str] = {}
    num_res_blocks = list(unet_config["num_res_blocks"])
    depths = list(unet_config["transformer_depth"])
    output_depths = list(unet_config["transformer_depth_output"])
    levels = len(unet_config["channel_mult"])

    def transformer(diffusers: str, ldm: str, depth: int) -> None:
        for name in _TRANSFORMER_SELF:
            mapping[f"{diffusers}.{name}"] = f"{ldm}.{name}"
        for index in range(depth):
            for name in _TRANSFORMER_BLOCK:
                mapping[f"{diffusers}.transformer_blocks.{index}.{name}"] = f"{ldm}.transformer_blocks.{index}.{name}"

    block = 1
    for level in range(levels):
        for index in range(num_res_blocks[level]):
            for ldm_name, diffusers_name in _RESNET.items():
                mapping[f"down_blocks.{level}.resnets.{index}.{diffusers_name}"] = f"input_blocks.{block}.0.{ldm_name}"
            depth = depths.pop(0)
            if depth > 0:
                transformer(f"down_blocks.{level}.attentions.{index}", f"input_blocks.{block}.1", depth)
            block += 1
        if level != levels - 1:
            mapping[f"down_blocks.{level}.downsamplers.0.conv"] = f"input_blocks.{block}.0.op"
            block += 1

    middle = unet_config.get("transformer_depth_middle", 1)
    if middle is not None and middle >= 0:
        transformer("mid_block.attentions.0", "middle_block.1", middle)
    for index, ldm_index in enumerate((0, 2)):
        for ldm_name, diffusers_name in _RESNET.items():
            mapping[f"mid_block.resnets.{index}.{diffusers_name}"] = f"middle_block.{ldm_index}.{ldm_name}"

    block = 0
    for up_level, level in enumerate(reversed(range(levels))):
        count = num_res_blocks[level] + 1
        for index in range(count):
            for ldm_name, diffusers_name in _RESNET.items():
                mapping[f"up_blocks.{up_level}.resnets.{index}.{diffusers_name}"] = f"output_blocks.{block}.0.{ldm_name}"
            layer = 1
            depth = output_depths.pop()
            if depth > 0:
                transformer(f"up_blocks.{up_level}.attentions.{index}", f"output_blocks.{block}.1", depth)
                layer = 2
            if index == count - 1 and level != 0:
                mapping[f"up_blocks.{up_level}.upsamplers.0.conv"] = f"output_blocks.{block}.{layer}.conv"
            block += 1

    for ldm_name, diffusers_name in _BASIC:
        mapping[diffusers_name] = ldm_name
    return mapping


def model_lora_keys_unet(model: Any, key_map: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """LoRA module name -> our key, for every format: LDM names, kohya and diffusers names of the UNet."""
    key_map = {} if key_map is None else key_map
    keys = model.state_dict().keys()
    for key in keys:
        if not key.startswith("diffusion_model."):
            continue
        if key.endswith(".weight"):
            module = key[len("diffusion_model."):-len(".weight")]
            key_map[f"lora_unet_{module.replace('.', '_')}"] = key
            key_map[key[:-len(".weight")]] = key
        else:
            key_map[key] = key
    for diffusers_name, ldm_name in unet_to_diffusers(model.model_config.unet_config).items():
        target = f"diffusion_model.{ldm_name}.weight"
        if target not in keys:
            continue
        key_map[f"lora_unet_{diffusers_name.replace('.', '_')}"] = target
        key_map[f"lycoris_{diffusers_name.replace('.', '_')}"] = target
        for prefix in ("", "unet."):
            name = prefix + diffusers_name.replace(".to_", ".processor.to_")
            if name.endswith(".to_out.0"):
                name = name[:-len(".0")]
            key_map[name] = target
        # peft / diffusers >= 0.21 names keep ".to_out.0" and no ".processor".
        key_map[f"unet.{diffusers_name}"] = target
    return key_map


_CLIP_MODULES = {"mlp.fc1": "mlp_fc1", "mlp.fc2": "mlp_fc2", "self_attn.k_proj": "self_attn_k_proj",
                 "self_attn.q_proj": "self_attn_q_proj", "self_attn.v_proj": "self_attn_v_proj",
                 "self_attn.out_proj": "self_attn_out_proj"}


def model_lora_keys_clip(model: torch.nn.Module, key_map: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """LoRA names for a text-encoder module whose keys follow ComfyUI's ``clip_l.transformer.text_model...``."""
    key_map = {} if key_map is None else key_map
    keys = set(model.state_dict().keys())
    for key in keys:
        if key.endswith(".weight"):
            key_map[f"text_encoders.{key[:-len('.weight')]}"] = key
    has_l = any(key.startswith("clip_l.") for key in keys)
    for layer in range(64):
        for module, kohya in _CLIP_MODULES.items():
            for encoder in ("clip_l", "clip_h", "clip_g"):
                weight = f"{encoder}.transformer.text_model.encoder.layers.{layer}.{module}.weight"
                if weight not in keys:
                    continue
                if encoder == "clip_g" and has_l:
                    names = ("lora_te2_{}", "text_encoder_2.{}")
                elif encoder == "clip_g":
                    names = ("lora_te_{}", "text_encoder.{}", "lora_prior_te_{}")
                else:
                    names = ("lora_te_{}", "lora_te1_{}", "text_encoder.{}")
                for pattern in names:
                    dotted = pattern.startswith("text_encoder")
                    suffix = f"text_model.encoder.layers.{layer}.{module}" if dotted \
                        else f"text_model_encoder_layers_{layer}_{kohya}"
                    key_map[pattern.format(suffix)] = weight
    return key_map


def text_encoder_key_map(clip: Any) -> dict[str, Any]:
    """LoRA name -> weight key in ``clip``'s patcher: the text encoders' own map, else ComfyUI's naming."""
    from comfyui_core_nodes import text_encoders

    own = getattr(text_encoders, "text_encoder_key_map", None)
    if own is not None:
        return own(clip)
    return model_lora_keys_clip(clip.cond_stage_model)


def load_lora_for_models(model: Any, clip: Any, lora: Mapping[str, torch.Tensor], strength_model: float,
                         strength_clip: float, lora_name: Optional[str] = None) -> tuple[Any, Any]:
    """Clones of ``model`` and ``clip`` with the LoRA's patches added (``comfy.sd.load_lora_for_models``)."""
    key_map: dict[str, Any] = {}
    if model is not None:
        key_map = model_lora_keys_unet(model.model, key_map)
    if clip is not None:
        key_map.update(text_encoder_key_map(clip))
    patches = load_lora(lora, key_map, lora_name=lora_name)
    new_model = new_clip = None
    applied: set = set()
    if model is not None:
        new_model = model.clone()
        applied |= set(new_model.add_patches(patches, strength_model))
    if clip is not None:
        new_clip = clip.clone()
        applied |= set(new_clip.add_patches(patches, strength_clip))
    for key in patches:
        if key not in applied:
            logger.warning("[%s] LoRA key not applied: %s", lora_name or "lora", key)
    return new_model, new_clip


__all__ = ["ADAPTERS", "LoHaAdapter", "LoKrAdapter", "LoRAAdapter", "WeightAdapter", "calculate_weight",
           "load_lora", "load_lora_for_models", "model_lora_keys_clip", "model_lora_keys_unet", "text_encoder_key_map",
           "unet_to_diffusers", "weight_decompose"]
