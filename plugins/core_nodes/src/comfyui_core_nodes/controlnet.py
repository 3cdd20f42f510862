"""ControlNet (SD1.5/SDXL, original ``control_model.*`` or diffusers layout), Control-LoRA and T2I-Adapter (full
and light), as conditioning's ``control``.

A control object sits in a conditioning dict under ``"control"``. For each model call the sampler
asks ``get_control(x, sigma, cond, batched_number, transformer_options)``, which returns the residuals
``{"input": [...], "middle": [...], "output": [...]}`` the UNet adds to its blocks (each list consumed
from its end). Chained controls (``set_previous_controlnet``) sum their residuals.
"""
from __future__ import annotations

import enum
import logging
import math
import os
from typing import Any, Callable, Mapping, Optional

import torch
import torch.nn as nn

from comfyui_core_nodes import detection, diffusers_layout, model_management
from comfyui_core_nodes import ops as ops_module
from comfyui_core_nodes.loading import ModelFileError, load_into, load_torch_file, take_prefix
from comfyui_core_nodes.model_patcher import ModelPatcher
from comfyui_core_nodes.nodes_controlnet import UNION_CONTROLNET_TYPES
from comfyui_core_nodes.ops import Operations
from comfyui_core_nodes.unet import TimestepEmbedSequential, UNetConfig, build_encoder, build_time_embedding
from comfyui_core_nodes.unet import timestep_embedding

logger = logging.getLogger(__name__)

# Channels of the hint encoder's convolutions (each after the first: stride 1, then stride 2).
HINT_CHANNELS = (16, 16, 32, 32, 96, 96, 256)
HINT_STRIDES = (1, 1, 2, 1, 2, 1, 2)


UNION_TYPE_EMBEDDING = 256  # each control type's one-hot entry is embedded like a timestep, this wide
UNION_HEADS = 8


class _UnionAttentionBlock(nn.Module):
    """A pre-norm transformer block (QuickGELU MLP) that mixes the hint feature with its control type's embedding."""

    def __init__(self, width: int, dtype: Any, device: Any, operations: Operations):
        super().__init__()
        self.attn = nn.Module()
        self.attn.in_proj = operations.Linear(width, 3 * width, dtype=dtype, device=device)
        self.attn.out_proj = operations.Linear(width, width, dtype=dtype, device=device)
        self.ln_1 = operations.LayerNorm(width, dtype=dtype, device=device)
        self.mlp = nn.Module()
        self.mlp.c_fc = operations.Linear(width, 4 * width, dtype=dtype, device=device)
        self.mlp.c_proj = operations.Linear(4 * width, width, dtype=dtype, device=device)
        self.ln_2 = operations.LayerNorm(width, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from comfyui_core_nodes.attention import optimized_attention

        q, k, v = self.attn.in_proj(self.ln_1(x)).chunk(3, dim=2)
        x = x + self.attn.out_proj(optimized_attention(q, k, v, UNION_HEADS))
        hidden = self.mlp.c_fc(self.ln_2(x))
        return x + self.mlp.c_proj(hidden * torch.sigmoid(1.702 * hidden))


class ControlNetModel(nn.Module):
    """A copy of the UNet's encoder with a hint encoder and zero convolutions after each block; a union ControlNet
    (``union_types`` kinds of hint) also embeds which kind of hint it is given."""

    def __init__(self, config: UNetConfig, hint_channels: int, dtype: Optional[torch.dtype] = None,
                 device: Any = None, operations: Operations = ops_module.disable_weight_init,
                 union_types: Optional[int] = None, union_width: int = 320, union_layers: int = 1):
        super().__init__()
        self.config = config
        self.dtype = dtype if dtype is not None else torch.float32
        self.model_channels = config.model_channels
        self.time_embed, label_emb = build_time_embedding(config, dtype, device, operations)
        if label_emb is not None:
            self.label_emb = label_emb
        self.input_blocks, self.middle_block, skip_channels, channels = build_encoder(config, dtype, device,
                                                                                     operations)
        self.zero_convs = nn.ModuleList([self._zero_conv(width, dtype, device, operations)
                                         for width in skip_channels])
        layers: list[nn.Module] = []
        previous = hint_channels
        for width, stride in zip(HINT_CHANNELS, HINT_STRIDES):
            layers += [operations.Conv2d(previous, width, 3, padding=1, stride=stride, dtype=dtype, device=device),
                       nn.SiLU()]
            previous = width
        layers.append(operations.Conv2d(previous, config.model_channels, 3, padding=1, dtype=dtype, device=device))
        self.input_hint_block = TimestepEmbedSequential(*layers)
        self.middle_block_out = self._zero_conv(channels, dtype, device, operations)
        self.union_types = union_types
        if union_types is not None:
            time_embed_dim = config.model_channels * 4
            self.task_embedding = nn.Parameter(torch.empty(union_types, union_width, dtype=dtype, device=device))
            self.transformer_layes = nn.Sequential(*(_UnionAttentionBlock(union_width, dtype, device, operations)
                                                     for _ in range(union_layers)))
            self.spatial_ch_projs = operations.Linear(union_width, config.model_channels, dtype=dtype, device=device)
            self.control_add_embedding = nn.Module()
            self.control_add_embedding.linear_1 = operations.Linear(UNION_TYPE_EMBEDDING * union_types, time_embed_dim,
                                                                    dtype=dtype, device=device)
            self.control_add_embedding.linear_2 = operations.Linear(time_embed_dim, time_embed_dim, dtype=dtype,
                                                                    device=device)

    def _control_type_embedding(self, control_type: list[int], emb: torch.Tensor) -> torch.Tensor:
        unknown = [kind for kind in control_type if not 0 <= kind < self.union_types]
        if unknown:
            names = {index: name for name, index in UNION_CONTROLNET_TYPES.items()}
            raise ValueError(f"control type {names.get(unknown[0], unknown[0])} is beyond the {self.union_types} kinds "
                             f"this union ControlNet knows; the ProMax union model knows all "
                             f"{len(UNION_CONTROLNET_TYPES)}")
        one_hot = torch.zeros(self.union_types, device=emb.device)
        one_hot[control_type] = 1.0
        embedded = timestep_embedding(one_hot, UNION_TYPE_EMBEDDING).to(emb.dtype).reshape(1, -1)
        embedding = self.control_add_embedding
        return embedding.linear_2(nn.functional.silu(embedding.linear_1(embedded)))

    def _with_control_type(self, hint_features: torch.Tensor, control_type: int) -> torch.Tensor:
        """The hint's features shifted per channel by what the transformer makes of their mean and the type."""
        feature = hint_features.mean(dim=(2, 3)) + self.task_embedding[control_type].to(hint_features)
        mixed = self.transformer_layes(feature.unsqueeze(1))
        return hint_features + self.spatial_ch_projs(mixed[:, 0])[:, :, None, None]

    @staticmethod
    def _zero_conv(channels: int, dtype: Any, device: Any, operations: Operations) -> TimestepEmbedSequential:
        return TimestepEmbedSequential(operations.Conv2d(channels, channels, 1, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor, hint: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                y: Optional[torch.Tensor] = None, **kwargs: Any) -> dict[str, list[torch.Tensor]]:
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        guided_hint: Optional[torch.Tensor]
        if self.union_types is not None:
            control_type = list(kwargs.get("control_type", []))
            emb = emb + self._control_type_embedding(control_type, emb)
            guided_hint = self.input_hint_block(hint, emb, context)
            if control_type:
                guided_hint = self._with_control_type(guided_hint, control_type[0])
        else:
            guided_hint = self.input_hint_block(hint, emb, context)
        if hasattr(self, "label_emb"):
            if y is None:
                raise ValueError("this ControlNet is for SDXL and needs its ADM vector; is it used with an SD1 model?")
            emb = emb + self.label_emb(y)
        outputs = []
        h = x
        for module, zero_conv in zip(self.input_blocks, self.zero_convs):
            h = module(h, emb, context)
            if guided_hint is not None:
                h = h + guided_hint
                guided_hint = None
            outputs.append(zero_conv(h, emb, context))
        h = self.middle_block(h, emb, context)
        return {"middle": [self.middle_block_out(h, emb, context)], "output": outputs}


class StrengthType(enum.Enum):
    CONSTANT = 1
    LINEAR_UP = 2


def broadcast_image_to(tensor: torch.Tensor, target_batch_size: int, batched_number: int) -> torch.Tensor:
    """A hint batch fitted to a model batch made of ``batched_number`` conditionings of equal size."""
    if tensor.shape[0] == 1:
        return tensor
    per_batch = target_batch_size // batched_number
    tensor = tensor[:per_batch]
    if per_batch > tensor.shape[0]:
        tensor = torch.cat([tensor] * (per_batch // tensor.shape[0]) + [tensor[:per_batch % tensor.shape[0]]], dim=0)
    if tensor.shape[0] == target_batch_size:
        return tensor
    return torch.cat([tensor] * batched_number, dim=0)


class ControlBase:
    """What every control has: a hint image, a strength, a percent range and a chain of previous controls."""

    def __init__(self) -> None:
        self.cond_hint_original: Optional[torch.Tensor] = None
        self.cond_hint: Optional[torch.Tensor] = None
        self.strength = 1.0
        self.timestep_percent_range = (0.0, 1.0)
        self.timestep_range: Optional[tuple[float, float]] = None
        self.latent_format: Any = None
        self.vae: Any = None
        self.global_average_pooling = False
        self.compression_ratio = 8
        self.upscale_algorithm = "nearest-exact"
        self.extra_args: dict[str, Any] = {}
        self.previous_controlnet: Optional[ControlBase] = None
        self.extra_conds: list[str] = []
        self.strength_type = StrengthType.CONSTANT
        self.concat_mask = False
        self.extra_concat_orig: list[torch.Tensor] = []
        self.extra_hooks = None
        self.preprocess_image: Callable[[torch.Tensor], torch.Tensor] = lambda image: image

    def set_cond_hint(self, cond_hint: torch.Tensor, strength: float = 1.0,
                      timestep_percent_range: tuple[float, float] = (0.0, 1.0), vae: Any = None,
                      extra_concat: Optional[list] = None) -> "ControlBase":
        """``cond_hint`` is (B, C, H, W) in [0, 1]."""
        self.cond_hint_original = cond_hint
        self.strength = strength
        self.timestep_percent_range = timestep_percent_range
        if self.latent_format is not None:
            self.vae = vae
        self.extra_concat_orig = list(extra_concat or [])
        return self

    def set_extra_arg(self, name: str, value: Any = None) -> None:
        """An argument passed on to the control model (a union ControlNet's ``control_type``)."""
        self.extra_args[name] = value

    def set_previous_controlnet(self, controlnet: Optional["ControlBase"]) -> "ControlBase":
        self.previous_controlnet = controlnet
        return self

    def pre_run(self, model: Any, percent_to_timestep_function: Callable[[float], float]) -> None:
        """Called once per sampling run: the percent range as sigmas."""
        self.timestep_range = (percent_to_timestep_function(self.timestep_percent_range[0]),
                               percent_to_timestep_function(self.timestep_percent_range[1]))
        if self.previous_controlnet is not None:
            self.previous_controlnet.pre_run(model, percent_to_timestep_function)

    def cleanup(self) -> None:
        if self.previous_controlnet is not None:
            self.previous_controlnet.cleanup()
        self.cond_hint = None
        self.timestep_range = None

    def get_models(self) -> list[Any]:
        return self.previous_controlnet.get_models() if self.previous_controlnet is not None else []

    def get_extra_hooks(self) -> list[Any]:
        out = [self.extra_hooks] if self.extra_hooks is not None else []
        if self.previous_controlnet is not None:
            out += self.previous_controlnet.get_extra_hooks()
        return out

    def inference_memory_requirements(self, dtype: torch.dtype) -> int:
        if self.previous_controlnet is not None:
            return self.previous_controlnet.inference_memory_requirements(dtype)
        return 0

    def copy_to(self, other: "ControlBase") -> None:
        for name in ("cond_hint_original", "strength", "timestep_percent_range", "global_average_pooling",
                     "compression_ratio", "upscale_algorithm", "latent_format", "vae", "strength_type",
                     "concat_mask", "preprocess_image", "extra_hooks"):
            setattr(other, name, getattr(self, name))
        other.extra_args = dict(self.extra_args)
        other.extra_conds = list(self.extra_conds)
        other.extra_concat_orig = list(self.extra_concat_orig)

    def _outside_range(self, t: torch.Tensor) -> bool:
        return self.timestep_range is not None and (t[0] > self.timestep_range[0] or t[0] < self.timestep_range[1])

    def control_merge(self, control: dict[str, list], control_prev: Optional[dict[str, list]],
                      output_dtype: Optional[torch.dtype]) -> dict[str, list]:
        """Scale this control's residuals by its strength and add the previous controls' ones."""
        out: dict[str, list] = {"input": [], "middle": [], "output": []}
        for key, values in control.items():
            scaled: set[int] = set()
            for index, value in enumerate(values):
                if value is not None:
                    if self.global_average_pooling:
                        value = torch.mean(value, dim=(2, 3), keepdim=True).repeat(1, 1, value.shape[2], value.shape[3])
                    # Controls may share tensors between entries; scale each tensor once.
                    if id(value) not in scaled:
                        scaled.add(id(value))
                        if self.strength_type == StrengthType.CONSTANT:
                            value *= self.strength
                        else:
                            value *= self.strength ** float(len(values) - index)
                    if output_dtype is not None and value.dtype != output_dtype:
                        value = value.to(output_dtype)
                out[key].append(value)
        if control_prev is not None:
            for key in ("input", "middle", "output"):
                mine = out[key]
                for index, previous in enumerate(control_prev.get(key, [])):
                    if index >= len(mine):
                        mine.append(previous)
                    elif previous is not None:
                        mine[index] = previous if mine[index] is None else previous + mine[index]
        return out

    def _previous(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: dict, batched_number: int,
                  transformer_options: dict) -> Optional[dict]:
        if self.previous_controlnet is None:
            return None
        return self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)

    def get_control(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: dict, batched_number: int,
                    transformer_options: dict) -> Optional[dict]:
        raise NotImplementedError


class ControlNet(ControlBase):
    def __init__(self, control_model: Optional[ControlNetModel] = None, global_average_pooling: bool = False,
                 load_device: Optional[torch.device] = None, manual_cast_dtype: Optional[torch.dtype] = None,
                 ckpt_name: Optional[str] = None, family: Optional[str] = None):
        super().__init__()
        self.control_model = control_model
        # The model family the ControlNet was detected as (its UNet encoder's shapes).
        self.family = family
        self.load_device = load_device
        self.manual_cast_dtype = manual_cast_dtype
        self.global_average_pooling = global_average_pooling
        self.model_sampling_current: Any = None
        self.extra_conds = ["y"]
        self.control_model_wrapped: Optional[ModelPatcher] = None
        if control_model is not None:
            self.control_model_wrapped = ModelPatcher(control_model, load_device=load_device,
                                                      offload_device=model_management.unet_offload_device())
            self.control_model_wrapped.ckpt_name = os.path.basename(ckpt_name) if ckpt_name else None

    def copy(self) -> "ControlNet":
        other = ControlNet(None, self.global_average_pooling, self.load_device, self.manual_cast_dtype,
                           family=self.family)
        other.control_model = self.control_model
        other.control_model_wrapped = self.control_model_wrapped
        self.copy_to(other)
        return other

    def get_models(self) -> list[Any]:
        return super().get_models() + [self.control_model_wrapped]

    def pre_run(self, model: Any, percent_to_timestep_function: Callable[[float], float]) -> None:
        model_family = getattr(getattr(model, "model_config", None), "family", None)
        if self.family is not None and model_family is not None and model_family != self.family:
            raise ValueError(f"This ControlNet is for {detection.FAMILIES_BY_NAME[self.family].description} models, "
                             f"but the model being sampled is {detection.FAMILIES_BY_NAME[model_family].description}")
        super().pre_run(model, percent_to_timestep_function)
        self.model_sampling_current = model.model_sampling

    def cleanup(self) -> None:
        self.model_sampling_current = None
        super().cleanup()

    def inference_memory_requirements(self, dtype: torch.dtype) -> int:
        return super().inference_memory_requirements(dtype)

    def _hint_for(self, x_noisy: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        from comfyui_core_nodes.utils import common_upscale

        height, width = x_noisy.shape[2] * self.compression_ratio, x_noisy.shape[3] * self.compression_ratio
        if self.cond_hint is None or self.cond_hint.shape[2] != height or self.cond_hint.shape[3] != width:
            hint = common_upscale(self.cond_hint_original, width, height, self.upscale_algorithm, "center")
            self.cond_hint = self.preprocess_image(hint).to(device=x_noisy.device, dtype=dtype)
        return self.cond_hint

    def get_control(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: dict, batched_number: int,
                    transformer_options: dict) -> Optional[dict]:
        control_prev = self._previous(x_noisy, t, cond, batched_number, transformer_options)
        if self._outside_range(t):
            return control_prev
        dtype = self.manual_cast_dtype if self.manual_cast_dtype is not None else self.control_model.dtype
        hint = self._hint_for(x_noisy, dtype)
        if x_noisy.shape[0] != hint.shape[0]:
            hint = broadcast_image_to(hint, x_noisy.shape[0], batched_number)
        context = cond.get("crossattn_controlnet", cond["c_crossattn"])
        extra = dict(self.extra_args)
        for name in self.extra_conds:
            value = cond.get(name)
            if value is not None:
                extra[name] = model_management.cast_to_device(value, x_noisy.device, dtype)
        sampling = self.model_sampling_current
        timestep = sampling.timestep(t)
        x_in = sampling.calculate_input(t, x_noisy)
        control = self.control_model(x=x_in.to(dtype), hint=hint, timesteps=timestep.to(dtype),
                                     context=model_management.cast_to_device(context, x_noisy.device, dtype), **extra)
        return self.control_merge(control, control_prev, output_dtype=None)


class ControlLora(ControlNet):
    """Stability's Control-LoRA: a ControlNet kept as low-rank differences (``<module>.up`` @ ``<module>.down``) to
    the sampled model's own encoder weights, plus whole tensors for what the UNet lacks (hint encoder, zero
    convolutions, norms and biases). The network is assembled from the model at the start of each run."""

    def __init__(self, control_weights: Mapping[str, torch.Tensor], global_average_pooling: bool = False,
                 ckpt_name: Optional[str] = None):
        super().__init__(None, global_average_pooling, ckpt_name=ckpt_name)
        self.control_weights = control_weights
        self.ckpt_name = ckpt_name

    def copy(self) -> "ControlLora":
        other = ControlLora(self.control_weights, self.global_average_pooling, self.ckpt_name)
        self.copy_to(other)
        return other

    def get_models(self) -> list[Any]:
        # Built per run on the model's device from the model's weights: nothing for the memory manager to move.
        return ControlBase.get_models(self)

    def pre_run(self, model: Any, percent_to_timestep_function: Callable[[float], float]) -> None:
        super().pre_run(model, percent_to_timestep_function)
        self.manual_cast_dtype = model.manual_cast_dtype
        dtype = self.manual_cast_dtype or model.get_dtype()
        base = model.diffusion_model.state_dict()
        device = next(iter(base.values())).device
        with torch.device("meta"):
            control = ControlNetModel(model.model_config.unet, self.control_weights["input_hint_block.0.weight"].shape[1],
                                      dtype=dtype, operations=ops_module.pick_operations(dtype, self.manual_cast_dtype))
        name = self.ckpt_name or "Control-LoRA"
        family = detection.FAMILIES_BY_NAME[model.model_config.family].description
        weights = {}
        for key, target in control.state_dict().items():
            weight = self.control_weights.get(key, base.get(key))
            up = self.control_weights.get(key.removesuffix(".weight") + ".up")
            down = self.control_weights.get(key.removesuffix(".weight") + ".down")
            fits = weight is not None and weight.shape == target.shape and (
                up is None or (down is not None and up.shape[0] * math.prod(down.shape[1:]) == target.numel()))
            if not fits:
                raise ModelFileError(f"{name} does not fit the model being sampled ({family}): {key} is missing or has "
                                     f"another shape; is it a Control-LoRA for another model family?")
            if up is not None:
                weight = weight.to(device, torch.float32) + (up.to(device, torch.float32).flatten(1)
                                                             @ down.to(device, torch.float32).flatten(1)
                                                             ).reshape(weight.shape)
            weights[key] = weight.to(device)
        load_into(control, weights, dtype, what=self.ckpt_name or "Control-LoRA")
        self.control_model = control.to(device).eval()

    def cleanup(self) -> None:
        self.control_model = None
        super().cleanup()

    def inference_memory_requirements(self, dtype: torch.dtype) -> int:
        size = sum(value.numel() for value in self.control_weights.values()) * model_management.dtype_size(dtype)
        return size + super().inference_memory_requirements(dtype)


# -- T2I-Adapter ---------------------------------------------------------------------------------------

class AdapterResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, down: bool, ksize: int = 3, use_conv: bool = True):
        super().__init__()
        padding = ksize // 2
        self.down = down
        if down:
            self.down_opt = _AdapterDownsample(in_channels, use_conv)
        # Adapters are built with skip connections (sk=True): an input conv only when the width changes.
        self.in_conv = nn.Conv2d(in_channels, out_channels, ksize, 1, padding) if in_channels != out_channels else None
        self.block1 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        self.act = nn.ReLU()
        self.block2 = nn.Conv2d(out_channels, out_channels, ksize, 1, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            x = self.down_opt(x)
        if self.in_conv is not None:
            x = self.in_conv(x)
        return self.block2(self.act(self.block1(x))) + x


class _AdapterDownsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_conv:
            return self.op(x)
        # Odd sizes are padded so the pooled size rounds up.
        return nn.functional.avg_pool2d(x, kernel_size=2, stride=2, padding=[x.shape[2] % 2, x.shape[3] % 2])


class Adapter(nn.Module):
    """The T2I-Adapter (full): pixel-unshuffle, then a residual tower emitting one feature map per level."""

    def __init__(self, channels: list[int], nums_rb: int = 2, cin: int = 192, ksize: int = 1, use_conv: bool = False,
                 xl: bool = False):
        super().__init__()
        self.xl = xl
        self.unshuffle_amount = 16 if xl else 8
        downsample_levels = [2] if xl else [3, 2, 1]
        no_downsample_levels = [1] if xl else []
        self.input_channels = cin // (self.unshuffle_amount * self.unshuffle_amount)
        self.unshuffle = nn.PixelUnshuffle(self.unshuffle_amount)
        self.channels = channels
        self.nums_rb = nums_rb
        body = []
        for level in range(len(channels)):
            for index in range(nums_rb):
                first = index == 0 and (level in downsample_levels or level in no_downsample_levels)
                body.append(AdapterResnetBlock(channels[level - 1] if first else channels[level], channels[level],
                                               down=first and level in downsample_levels, ksize=ksize,
                                               use_conv=use_conv))
        self.body = nn.ModuleList(body)
        self.conv_in = nn.Conv2d(cin, channels[0], 3, 1, 1)

    def forward(self, x: torch.Tensor) -> dict[str, list[Optional[torch.Tensor]]]:
        x = self.conv_in(self.unshuffle(x))
        features: list[Optional[torch.Tensor]] = []
        for level in range(len(self.channels)):
            for index in range(self.nums_rb):
                x = self.body[level * self.nums_rb + index](x)
            # Placeholders line the features up with the UNet's input blocks.
            if self.xl:
                features.append(None)
                if level == 0:
                    features += [None, None]
                if level == 2:
                    features.append(None)
            else:
                features += [None, None]
            features.append(x)
        features = features[::-1]
        if self.xl:
            return {"input": features[1:], "middle": features[:1]}
        return {"input": features}


class _LightResnetBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block1 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.act = nn.ReLU()
        self.block2 = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block2(self.act(self.block1(x))) + x


class _LightExtractor(nn.Module):
    """One level of the light adapter: 1x1 in to a quarter width, ResBlocks, 1x1 out (after pooling if ``down``)."""

    def __init__(self, in_channels: int, inner_channels: int, out_channels: int, nums_rb: int, down: bool):
        super().__init__()
        self.down_opt = _AdapterDownsample(in_channels, use_conv=False) if down else None
        self.in_conv = nn.Conv2d(in_channels, inner_channels, 1, 1, 0)
        self.body = nn.Sequential(*(_LightResnetBlock(inner_channels) for _ in range(nums_rb)))
        self.out_conv = nn.Conv2d(inner_channels, out_channels, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down_opt is not None:
            x = self.down_opt(x)
        return self.out_conv(self.body(self.in_conv(x)))


class LightAdapter(nn.Module):
    """The light T2I-Adapter (``body.N.in_conv``, ``body.N.body.M``): one small extractor per UNet level."""

    xl = False
    unshuffle_amount = 8

    def __init__(self, channels: list[int], nums_rb: int, cin: int):
        super().__init__()
        self.input_channels = cin // (self.unshuffle_amount * self.unshuffle_amount)
        self.unshuffle = nn.PixelUnshuffle(self.unshuffle_amount)
        self.channels = channels
        self.body = nn.ModuleList(
            _LightExtractor(cin if level == 0 else channels[level - 1], width // 4, width, nums_rb, down=level > 0)
            for level, width in enumerate(channels))

    def forward(self, x: torch.Tensor) -> dict[str, list[Optional[torch.Tensor]]]:
        x = self.unshuffle(x)
        features: list[Optional[torch.Tensor]] = []
        for extractor in self.body:
            x = extractor(x)
            features += [None, None, x]
        return {"input": features[::-1]}


class T2IAdapter(ControlBase):
    def __init__(self, t2i_model: Adapter, channels_in: int, compression_ratio: int = 8,
                 upscale_algorithm: str = "nearest-exact", device: Optional[torch.device] = None):
        super().__init__()
        self.t2i_model = t2i_model
        self.channels_in = channels_in
        self.control_input: Optional[dict] = None
        self.compression_ratio = compression_ratio
        self.upscale_algorithm = upscale_algorithm
        self.device = device if device is not None else model_management.get_torch_device()

    def scale_image_to(self, width: int, height: int) -> tuple[int, int]:
        amount = self.t2i_model.unshuffle_amount
        return math.ceil(width / amount) * amount, math.ceil(height / amount) * amount

    def copy(self) -> "T2IAdapter":
        other = T2IAdapter(self.t2i_model, self.channels_in, self.compression_ratio, self.upscale_algorithm)
        self.copy_to(other)
        return other

    def cleanup(self) -> None:
        self.control_input = None
        super().cleanup()

    def get_control(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: dict, batched_number: int,
                    transformer_options: dict) -> Optional[dict]:
        from comfyui_core_nodes.utils import common_upscale

        control_prev = self._previous(x_noisy, t, cond, batched_number, transformer_options)
        if self._outside_range(t):
            return control_prev
        wanted = (x_noisy.shape[2] * self.compression_ratio, x_noisy.shape[3] * self.compression_ratio)
        if self.cond_hint is None or tuple(self.cond_hint.shape[2:]) != wanted:
            self.control_input = None
            width, height = self.scale_image_to(wanted[1], wanted[0])
            hint = common_upscale(self.cond_hint_original, width, height, self.upscale_algorithm, "center")
            hint = hint.float().to(self.device)
            if self.channels_in == 1 and hint.shape[1] > 1:
                hint = torch.mean(hint, 1, keepdim=True)
            self.cond_hint = hint
        hint = self.cond_hint
        if x_noisy.shape[0] != hint.shape[0]:
            hint = broadcast_image_to(hint, x_noisy.shape[0], batched_number)
        if self.control_input is None:
            # The adapter sees only the image: its features are computed once per run.
            self.t2i_model.to(device=self.device, dtype=x_noisy.dtype)
            with torch.no_grad():
                self.control_input = self.t2i_model(hint.to(x_noisy.dtype))
            self.t2i_model.cpu()
        control = {key: [None if value is None else value.clone() for value in values]
                   for key, values in self.control_input.items()}
        return self.control_merge(control, control_prev, x_noisy.dtype)


def load_t2i_adapter(sd: dict[str, torch.Tensor]) -> Optional[T2IAdapter]:
    """A full or light T2I-Adapter in its original layout (``conv_in``/``body.N`` or ``body.N.in_conv``), with or
    without an ``adapter.`` prefix, or a full one in the diffusers layout (``adapter.body.L.resnets.R``)."""
    if "adapter" in sd and isinstance(sd["adapter"], dict):
        sd = sd["adapter"]
    if diffusers_layout.is_diffusers_t2i_adapter(sd):
        sd = diffusers_layout.t2i_adapter_to_original(sd)
    elif "conv_in.weight" not in sd and "body.0.in_conv.weight" not in sd:
        sd = take_prefix(sd, "adapter.")
    adapter: nn.Module
    if "body.0.in_conv.weight" in sd:
        with torch.device("meta"):
            adapter = LightAdapter([sd[f"body.{level}.out_conv.weight"].shape[0]
                                    for level in range(_count_children(sd, "body."))],
                                   nums_rb=_count_children(sd, "body.0.body."), cin=sd["body.0.in_conv.weight"].shape[1])
    elif "conv_in.weight" in sd:
        cin = sd["conv_in.weight"].shape[1]
        channel = sd["conv_in.weight"].shape[0]
        ksize = sd["body.0.block2.weight"].shape[2]
        use_conv = any(key.endswith("down_opt.op.weight") for key in sd)
        xl = cin in (256, 768)
        with torch.device("meta"):
            adapter = Adapter([channel, channel * 2, channel * 4, channel * 4], nums_rb=2, cin=cin, ksize=ksize,
                              use_conv=use_conv, xl=xl)
    else:
        return None
    load_into(adapter, sd, torch.float32, what="T2I-Adapter")
    return T2IAdapter(adapter, adapter.input_channels)


def _count_children(sd: Mapping[str, Any], prefix: str) -> int:
    return len({key[len(prefix):].split(".", 1)[0] for key in sd if key.startswith(prefix)})


def load_controlnet_state_dict(sd: dict[str, torch.Tensor], model: Any = None, model_options: Optional[dict] = None,
                               ckpt_name: str = "") -> ControlBase:
    model_options = model_options or {}
    if "lora_controlnet" in sd:
        return ControlLora(sd, model_options.get("global_average_pooling", False), ckpt_name=ckpt_name)
    if diffusers_layout.is_diffusers_controlnet(sd):
        sd = diffusers_layout.controlnet_to_ldm(sd, what=ckpt_name or "ControlNet")
    if "control_model.zero_convs.0.0.weight" in sd:
        prefix = "control_model."
    elif "zero_convs.0.0.weight" in sd:
        prefix = ""
    else:
        adapter = load_t2i_adapter(sd)
        if adapter is None:
            raise ModelFileError(f"{ckpt_name or 'this file'} is not a ControlNet (control_model.zero_convs.*) nor a "
                                 f"T2I-Adapter (conv_in, body.*): {detection.summarize_keys(sd)}")
        return adapter
    weights = take_prefix(sd, prefix)
    config = detection.model_config_for(weights)
    if config is None:
        raise ModelFileError(f"{ckpt_name}: the ControlNet has no input blocks: {detection.summarize_keys(sd)}")
    if "difference" in sd:
        if model is None:
            logger.warning("%s stores differences to a model but none was given (use DiffControlNetLoader)", ckpt_name)
        else:
            model_sd = model.model_state_dict()
            weights = {key: value + model_sd[f"diffusion_model.{key}"].to(value.dtype)
                       if f"diffusion_model.{key}" in model_sd else value for key, value in weights.items()}
    dtype = model_options.get("dtype") or model_management.unet_dtype(
        model_params=-1, supported_dtypes=config.supported_inference_dtypes,
        weight_dtype=next(iter(weights.values())).dtype)
    load_device = model_management.get_torch_device()
    manual_cast = model_management.unet_manual_cast(dtype, load_device)
    union = {}
    if "task_embedding" in weights:
        union = {"union_types": weights["task_embedding"].shape[0], "union_width": weights["task_embedding"].shape[1],
                 "union_layers": _count_children(weights, "transformer_layes.")}
    with torch.device("meta"):
        control_model = ControlNetModel(config.unet, weights["input_hint_block.0.weight"].shape[1], dtype=dtype,
                                        operations=ops_module.pick_operations(dtype, manual_cast), **union)
    load_into(control_model, weights, dtype, what=f"{ckpt_name or 'ControlNet'}")
    control_model.eval()
    global_average_pooling = model_options.get("global_average_pooling", False)
    return ControlNet(control_model, global_average_pooling=global_average_pooling, load_device=load_device,
                      manual_cast_dtype=manual_cast, ckpt_name=ckpt_name, family=config.family)


def load_controlnet(ckpt_path: str, model: Any = None, model_options: Optional[dict] = None) -> ControlBase:
    model_options = dict(model_options or {})
    stem = os.path.splitext(ckpt_path)[0]
    if "global_average_pooling" not in model_options and (stem.endswith("_shuffle") or stem.endswith("_shuffle_fp16")):
        # The shuffle ControlNet was trained on pooled residuals.
        model_options["global_average_pooling"] = True
    return load_controlnet_state_dict(load_torch_file(ckpt_path), model=model, model_options=model_options,
                                      ckpt_name=os.path.basename(ckpt_path))


__all__ = ["Adapter", "ControlBase", "ControlLora", "ControlNet", "ControlNetModel", "LightAdapter", "StrengthType", "T2IAdapter",
           "broadcast_image_to", "load_controlnet", "load_controlnet_state_dict", "load_t2i_adapter"]
