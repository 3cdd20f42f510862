"""The SD1.x / SD2.x / SDXL UNet in the original LDM layout, so released checkpoints load key for key.

State-dict keys: ``time_embed``, ``label_emb`` (SDXL's ADM vector), ``input_blocks``, ``middle_block``,
``output_blocks``, ``out``. Channel counts, depths and heads come from a ``UNetConfig`` so tests can
build tiny ones. ``transformer_options`` carries ComfyUI's patch points (``patches``, ``patches_replace``,
``block``...) that vanilla model-patching nodes use.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from comfyui_core_nodes import ops as ops_module
from comfyui_core_nodes.attention import optimized_attention
from comfyui_core_nodes.ops import Operations

logger = logging.getLogger(__name__)


@dataclass
class UNetConfig:
    """Everything that shapes a UNet; ``detection`` derives it from a state dict."""
    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    num_res_blocks: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    # One entry per input ResBlock (0: no transformer), one per output ResBlock, in block order.
    transformer_depth: list[int] = field(default_factory=lambda: [1, 1, 1, 1, 1, 1, 0, 0])
    transformer_depth_output: list[int] = field(default_factory=lambda: [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0])
    # -1: a middle ResBlock without transformer; -2: no middle block.
    transformer_depth_middle: int = 1
    context_dim: Optional[int] = 768
    use_linear_in_transformer: bool = False
    adm_in_channels: Optional[int] = None
    num_heads: int = 8
    num_head_channels: int = -1
    attn_precision: Optional[torch.dtype] = None

    def heads_for(self, channels: int) -> tuple[int, int]:
        """(heads, dim_head) of a transformer with ``channels`` channels."""
        if self.num_head_channels == -1:
            heads = self.num_heads
        else:
            # At least one head, so tiny test models with fewer channels than a head still build.
            heads = max(1, channels // self.num_head_channels)
        return heads, channels // heads


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding of (fractional) timesteps: cosines then sines, as the LDM UNet expects."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class Timestep(nn.Module):
    """Embeds scalars (SDXL's sizes and crops) like timesteps."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return timestep_embedding(t, self.dim)


class TimestepBlock(nn.Module):
    """A layer that takes the timestep embedding as second argument."""


class ResBlock(TimestepBlock):
    def __init__(self, channels: int, emb_channels: int, out_channels: Optional[int] = None, dtype: Any = None,
                 device: Any = None, operations: Operations = ops_module.disable_weight_init):
        super().__init__()
        out_channels = out_channels or channels
        self.channels, self.out_channels = channels, out_channels
        self.in_layers = nn.Sequential(
            operations.GroupNorm(32, channels, dtype=dtype, device=device),
            nn.SiLU(),
            operations.Conv2d(channels, out_channels, 3, padding=1, dtype=dtype, device=device),
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), operations.Linear(emb_channels, out_channels, dtype=dtype,
                                                                     device=device))
        self.out_layers = nn.Sequential(
            operations.GroupNorm(32, out_channels, dtype=dtype, device=device),
            nn.SiLU(),
            nn.Dropout(0.0),
            operations.Conv2d(out_channels, out_channels, 3, padding=1, dtype=dtype, device=device),
        )
        if out_channels == channels:
            self.skip_connection: nn.Module = nn.Identity()
        else:
            self.skip_connection = operations.Conv2d(channels, out_channels, 1, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)
        h = self.out_layers(h + emb_out[:, :, None, None])
        return self.skip_connection(x) + h


class Downsample(nn.Module):
    def __init__(self, channels: int, dtype: Any = None, device: Any = None,
                 operations: Operations = ops_module.disable_weight_init):
        super().__init__()
        self.op = operations.Conv2d(channels, channels, 3, stride=2, padding=1, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int, dtype: Any = None, device: Any = None,
                 operations: Operations = ops_module.disable_weight_init):
        super().__init__()
        self.conv = operations.Conv2d(channels, channels, 3, padding=1, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, output_shape: Optional[Sequence[int]] = None) -> torch.Tensor:
        size = [x.shape[2] * 2, x.shape[3] * 2] if output_shape is None else [output_shape[2], output_shape[3]]
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, dtype: Any = None, device: Any = None,
                 operations: Operations = ops_module.disable_weight_init):
        super().__init__()
        self.proj = operations.Linear(dim_in, dim_out * 2, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4, dtype: Any = None, device: Any = None,
                 operations: Operations = ops_module.disable_weight_init):
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner, dtype, device, operations), nn.Dropout(0.0),
                                 operations.Linear(inner, dim, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CrossAttention(nn.Module):
    def __init__(self, query_dim: int, context_dim: Optional[int], heads: int, dim_head: int,
                 attn_precision: Optional[torch.dtype] = None, dtype: Any = None, device: Any = None,
                 operations: Operations = ops_module.disable_weight_init):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim if context_dim is not None else query_dim
        self.heads, self.dim_head, self.attn_precision = heads, dim_head, attn_precision
        self.to_q = operations.Linear(query_dim, inner, bias=False, dtype=dtype, device=device)
        self.to_k = operations.Linear(context_dim, inner, bias=False, dtype=dtype, device=device)
        self.to_v = operations.Linear(context_dim, inner, bias=False, dtype=dtype, device=device)
        self.to_out = nn.Sequential(operations.Linear(inner, query_dim, dtype=dtype, device=device), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None, value: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None, transformer_options: Optional[dict] = None) -> torch.Tensor:
        q = self.to_q(x)
        context = x if context is None else context
        k = self.to_k(context)
        v = self.to_v(value if value is not None else context)
        out = optimized_attention(q, k, v, self.heads, mask=mask, attn_precision=self.attn_precision,
                                  transformer_options=transformer_options)
        return self.to_out(out)


def _run_patches(transformer_options: dict, name: str) -> list:
    return transformer_options.get("patches", {}).get(name, [])


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: Optional[int],
                 attn_precision: Optional[torch.dtype] = None, dtype: Any = None, device: Any = None,
                 operations: Operations = ops_module.disable_weight_init):
        super().__init__()
        self.n_heads, self.d_head, self.attn_precision = heads, dim_head, attn_precision
        self.attn1 = CrossAttention(dim, None, heads, dim_head, attn_precision, dtype, device, operations)
        self.ff = FeedForward(dim, dtype=dtype, device=device, operations=operations)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head, attn_precision, dtype, device, operations)
        self.norm1 = operations.LayerNorm(dim, dtype=dtype, device=device)
        self.norm2 = operations.LayerNorm(dim, dtype=dtype, device=device)
        self.norm3 = operations.LayerNorm(dim, dtype=dtype, device=device)

    def _attention(self, index: int, attn: CrossAttention, n: torch.Tensor, context: Optional[torch.Tensor],
                   transformer_options: dict, extra_options: dict) -> torch.Tensor:
        value = None
        patches = _run_patches(transformer_options, f"attn{index}_patch")
        if patches:
            context = n if context is None else context
            value = context
            for patch in patches:
                n, context, value = patch(n, context, value, extra_options)
        replace = transformer_options.get("patches_replace", {}).get(f"attn{index}", {})
        block = transformer_options.get("block")
        key = (block[0], block[1], transformer_options.get("block_index", 0)) if block is not None else None
        if key not in replace:
            key = block
        if key in replace:
            context = n if context is None else context
            value = context if value is None else value
            n = replace[key](attn.to_q(n), attn.to_k(context), attn.to_v(value), extra_options)
            n = attn.to_out(n)
        else:
            n = attn(n, context=context, value=value, transformer_options=transformer_options)
        for patch in _run_patches(transformer_options, f"attn{index}_output_patch"):
            n = patch(n, extra_options)
        return n

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                transformer_options: Optional[dict] = None) -> torch.Tensor:
        transformer_options = transformer_options if transformer_options is not None else {}
        extra_options = {key: value for key, value in transformer_options.items()
                         if key not in ("patches", "patches_replace")}
        extra_options.update(n_heads=self.n_heads, dim_head=self.d_head, attn_precision=self.attn_precision)
        x = self._attention(1, self.attn1, self.norm1(x), None, transformer_options, extra_options) + x
        for patch in _run_patches(transformer_options, "middle_patch"):
            x = patch(x, extra_options)
        x = self._attention(2, self.attn2, self.norm2(x), context, transformer_options, extra_options) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map; 1x1-conv (SD1) or linear (SD2, SDXL) projections."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: Optional[int],
                 use_linear: bool, attn_precision: Optional[torch.dtype] = None, dtype: Any = None,
                 device: Any = None, operations: Operations = ops_module.disable_weight_init):
        super().__init__()
        inner = heads * dim_head
        self.use_linear = use_linear
        self.norm = operations.GroupNorm(32, channels, eps=1e-6, dtype=dtype, device=device)
        if use_linear:
            self.proj_in: nn.Module = operations.Linear(channels, inner, dtype=dtype, device=device)
        else:
            self.proj_in = operations.Conv2d(channels, inner, 1, dtype=dtype, device=device)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(inner, heads, dim_head, context_dim, attn_precision, dtype, device, operations)
            for _ in range(depth)])
        if use_linear:
            self.proj_out: nn.Module = operations.Linear(inner, channels, dtype=dtype, device=device)
        else:
            self.proj_out = operations.Conv2d(inner, channels, 1, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, context: Any = None, transformer_options: Optional[dict] = None) -> torch.Tensor:
        transformer_options = transformer_options if transformer_options is not None else {}
        contexts = context if isinstance(context, list) else [context] * len(self.transformer_blocks)
        _, _, height, width = x.shape
        transformer_options["activations_shape"] = list(x.shape)
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.movedim(1, 3).flatten(1, 2).contiguous()
        if self.use_linear:
            x = self.proj_in(x)
        for index, block in enumerate(self.transformer_blocks):
            transformer_options["block_index"] = index
            x = block(x, context=contexts[index], transformer_options=transformer_options)
        if self.use_linear:
            x = self.proj_out(x)
        x = x.reshape(x.shape[0], height, width, x.shape[-1]).movedim(3, 1).contiguous()
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in


class TimestepEmbedSequential(nn.Sequential):
    """Passes the timestep embedding, the context and the transformer options to the layers that take them."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: Any = None,  # type: ignore[override]
                transformer_options: Optional[dict] = None, output_shape: Optional[Sequence[int]] = None
                ) -> torch.Tensor:
        transformer_options = transformer_options if transformer_options is not None else {}
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, transformer_options)
                if "transformer_index" in transformer_options:
                    transformer_options["transformer_index"] += 1
            elif isinstance(layer, Upsample):
                x = layer(x, output_shape=output_shape)
            else:
                x = layer(x)
        return x


def build_encoder(config: UNetConfig, dtype: Any, device: Any, operations: Operations
                  ) -> tuple[nn.ModuleList, Optional[TimestepEmbedSequential], list[int], int]:
    """The input blocks and middle block (shared with ControlNet); also the skip channels and last width."""
    time_embed_dim = config.model_channels * 4
    depths = list(config.transformer_depth)
    input_blocks = nn.ModuleList([TimestepEmbedSequential(
        operations.Conv2d(config.in_channels, config.model_channels, 3, padding=1, dtype=dtype, device=device))])
    skip_channels = [config.model_channels]
    channels = config.model_channels
    for level, mult in enumerate(config.channel_mult):
        for _ in range(config.num_res_blocks[level]):
            layers: list[nn.Module] = [ResBlock(channels, time_embed_dim, mult * config.model_channels, dtype, device,
                                                operations)]
            channels = mult * config.model_channels
            depth = depths.pop(0)
            if depth > 0:
                heads, dim_head = config.heads_for(channels)
                layers.append(SpatialTransformer(channels, heads, dim_head, depth, config.context_dim,
                                                 config.use_linear_in_transformer, config.attn_precision, dtype,
                                                 device, operations))
            input_blocks.append(TimestepEmbedSequential(*layers))
            skip_channels.append(channels)
        if level != len(config.channel_mult) - 1:
            input_blocks.append(TimestepEmbedSequential(Downsample(channels, dtype, device, operations)))
            skip_channels.append(channels)
    middle_block = None
    if config.transformer_depth_middle >= -1:
        middle: list[nn.Module] = [ResBlock(channels, time_embed_dim, None, dtype, device, operations)]
        if config.transformer_depth_middle >= 0:
            heads, dim_head = config.heads_for(channels)
            middle += [SpatialTransformer(channels, heads, dim_head, config.transformer_depth_middle,
                                          config.context_dim, config.use_linear_in_transformer,
                                          config.attn_precision, dtype, device, operations),
                       ResBlock(channels, time_embed_dim, None, dtype, device, operations)]
        middle_block = TimestepEmbedSequential(*middle)
    return input_blocks, middle_block, skip_channels, channels


def build_time_embedding(config: UNetConfig, dtype: Any, device: Any, operations: Operations
                         ) -> tuple[nn.Sequential, Optional[nn.Sequential]]:
    time_embed_dim = config.model_channels * 4
    time_embed = nn.Sequential(
        operations.Linear(config.model_channels, time_embed_dim, dtype=dtype, device=device), nn.SiLU(),
        operations.Linear(time_embed_dim, time_embed_dim, dtype=dtype, device=device))
    label_emb = None
    if config.adm_in_channels is not None:
        label_emb = nn.Sequential(nn.Sequential(
            operations.Linear(config.adm_in_channels, time_embed_dim, dtype=dtype, device=device), nn.SiLU(),
            operations.Linear(time_embed_dim, time_embed_dim, dtype=dtype, device=device)))
    return time_embed, label_emb


def _take_control(control: Optional[dict], name: str, h: torch.Tensor) -> torch.Tensor:
    """Add the next ControlNet / T2I-Adapter residual for ``name`` (consumed from the end, as ComfyUI does)."""
    if control is None or not control.get(name):
        return h
    residual = control[name].pop()
    if residual is None:
        return h
    try:
        return h + residual
    except RuntimeError:
        logger.warning("control residual of shape %s does not fit the %s block output %s; skipped",
                       tuple(residual.shape), name, tuple(h.shape))
        return h


class UNetModel(nn.Module):
    def __init__(self, config: UNetConfig, dtype: Optional[torch.dtype] = None, device: Any = None,
                 operations: Operations = ops_module.disable_weight_init):
        super().__init__()
        self.config = config
        self.dtype = dtype if dtype is not None else torch.float32
        self.model_channels = config.model_channels
        self.time_embed, label_emb = build_time_embedding(config, dtype, device, operations)
        if label_emb is not None:
            self.label_emb = label_emb
        self.input_blocks, self.middle_block, skip_channels, channels = build_encoder(config, dtype, device,
                                                                                     operations)
        time_embed_dim = config.model_channels * 4
        output_depths = list(config.transformer_depth_output)
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(config.channel_mult))[::-1]:
            for index in range(config.num_res_blocks[level] + 1):
                skip = skip_channels.pop()
                layers: list[nn.Module] = [ResBlock(channels + skip, time_embed_dim, config.model_channels * mult,
                                                    dtype, device, operations)]
                channels = config.model_channels * mult
                depth = output_depths.pop()
                if depth > 0:
                    heads, dim_head = config.heads_for(channels)
                    layers.append(SpatialTransformer(channels, heads, dim_head, depth, config.context_dim,
                                                     config.use_linear_in_transformer, config.attn_precision, dtype,
                                                     device, operations))
                if level and index == config.num_res_blocks[level]:
                    layers.append(Upsample(channels, dtype, device, operations))
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(
            operations.GroupNorm(32, channels, dtype=dtype, device=device), nn.SiLU(),
            operations.Conv2d(config.model_channels, config.out_channels, 3, padding=1, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: Optional[torch.Tensor] = None,
                y: Optional[torch.Tensor] = None, control: Optional[dict] = None,
                transformer_options: Optional[dict] = None, **kwargs: Any) -> torch.Tensor:
        transformer_options = transformer_options if transformer_options is not None else {}
        transformer_options["original_shape"] = list(x.shape)
        transformer_options["transformer_index"] = 0
        if control is not None:
            # Consumed below; the caller's lists stay whole.
            control = {name: list(values) for name, values in control.items()}
        if (y is not None) != hasattr(self, "label_emb"):
            raise ValueError("this UNet " + ("needs" if hasattr(self, "label_emb") else "does not take")
                             + " an ADM vector y (SDXL-style conditioning)")
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        for patch in _run_patches(transformer_options, "emb_patch"):
            emb = patch(emb, self.model_channels, transformer_options)
        if y is not None:
            emb = emb + self.label_emb(y)

        hs = []
        h = x
        for index, module in enumerate(self.input_blocks):
            transformer_options["block"] = ("input", index)
            h = module(h, emb, context, transformer_options)
            h = _take_control(control, "input", h)
            for patch in _run_patches(transformer_options, "input_block_patch"):
                h = patch(h, transformer_options)
            hs.append(h)
            for patch in _run_patches(transformer_options, "input_block_patch_after_skip"):
                h = patch(h, transformer_options)

        transformer_options["block"] = ("middle", 0)
        if self.middle_block is not None:
            h = self.middle_block(h, emb, context, transformer_options)
        h = _take_control(control, "middle", h)

        for index, module in enumerate(self.output_blocks):
            transformer_options["block"] = ("output", index)
            skip = _take_control(control, "output", hs.pop())
            for patch in _run_patches(transformer_options, "output_block_patch"):
                h, skip = patch(h, skip, transformer_options)
            h = torch.cat([h, skip], dim=1)
            output_shape = hs[-1].shape if hs else None
            h = module(h, emb, context, transformer_options, output_shape)
        return self.out(h.type(x.dtype))


__all__ = ["BasicTransformerBlock", "CrossAttention", "Downsample", "ResBlock", "SpatialTransformer", "Timestep",
           "TimestepEmbedSequential", "UNetConfig", "UNetModel", "Upsample", "build_encoder", "build_time_embedding",
           "timestep_embedding"]
