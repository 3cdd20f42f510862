"""The KL autoencoder (SD1.x/SD2.x/SDXL VAE) in the original layout, and ``VAE``, the object VAE nodes pass around.

Keys: ``encoder.*``, ``decoder.*``, ``quant_conv``, ``post_quant_conv``; attention q/k/v/proj_out are 1x1
convolutions. The architecture (widths, levels, latent channels) is read from the state dict's shapes.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from comfyui_core_nodes import model_management
from comfyui_core_nodes import ops as ops_module
from comfyui_core_nodes.attention import vae_attention
from comfyui_core_nodes.ops import Operations

logger = logging.getLogger(__name__)


@dataclass
class VAEConfig:
    ch: int = 128
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    num_res_blocks: int = 2
    in_channels: int = 3
    out_ch: int = 3
    z_channels: int = 4
    embed_dim: int = 4
    double_z: bool = True
    # Levels (0 = full resolution) whose ResnetBlocks are followed by attention; SD's VAE has none.
    attn_levels: list[int] = field(default_factory=list)

    @property
    def downscale_ratio(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


def _count(keys: Any, pattern: str) -> int:
    regex = re.compile(pattern)
    return len({match.group(1) for key in keys if (match := regex.match(key))})


def vae_config_from_state_dict(sd: Mapping[str, Any], prefix: str = "") -> VAEConfig:
    """The autoencoder a state dict (keys without ``first_stage_model.``) describes."""
    def shape(key: str) -> tuple[int, ...]:
        return tuple(sd[prefix + key].shape)

    keys = [key[len(prefix):] for key in sd if key.startswith(prefix)]
    ch = shape("encoder.conv_in.weight")[0]
    levels = _count(keys, r"encoder\.down\.(\d+)\.")
    ch_mult = [shape(f"encoder.down.{level}.block.0.conv1.weight")[0] // ch for level in range(levels)]
    z_channels = shape("decoder.conv_in.weight")[1]
    embed_dim = shape("post_quant_conv.weight")[1] if "post_quant_conv.weight" in keys else z_channels
    attn_levels = [level for level in range(levels) if any(key.startswith(f"encoder.down.{level}.attn.")
                                                          for key in keys)]
    return VAEConfig(ch=ch, ch_mult=ch_mult, num_res_blocks=_count(keys, r"encoder\.down\.0\.block\.(\d+)\."),
                     in_channels=shape("encoder.conv_in.weight")[1], out_ch=shape("decoder.conv_out.weight")[0],
                     z_channels=z_channels, embed_dim=embed_dim,
                     double_z=shape("encoder.conv_out.weight")[0] == 2 * z_channels, attn_levels=attn_levels)


def _norm(channels: int, operations: Operations, dtype: Any, device: Any) -> nn.Module:
    return operations.GroupNorm(32, channels, eps=1e-6, affine=True, dtype=dtype, device=device)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, operations: Operations, dtype: Any = None,
                 device: Any = None):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = _norm(in_channels, operations, dtype, device)
        self.conv1 = operations.Conv2d(in_channels, out_channels, 3, padding=1, dtype=dtype, device=device)
        self.norm2 = _norm(out_channels, operations, dtype, device)
        self.conv2 = operations.Conv2d(out_channels, out_channels, 3, padding=1, dtype=dtype, device=device)
        if in_channels != out_channels:
            self.nin_shortcut = operations.Conv2d(in_channels, out_channels, 1, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the pixels, with 1x1-conv projections."""

    def __init__(self, channels: int, operations: Operations, dtype: Any = None, device: Any = None):
        super().__init__()
        self.norm = _norm(channels, operations, dtype, device)
        self.q = operations.Conv2d(channels, channels, 1, dtype=dtype, device=device)
        self.k = operations.Conv2d(channels, channels, 1, dtype=dtype, device=device)
        self.v = operations.Conv2d(channels, channels, 1, dtype=dtype, device=device)
        self.proj_out = operations.Conv2d(channels, channels, 1, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        h = vae_attention()(self.q(h), self.k(h), self.v(h))
        return x + self.proj_out(h)


class Downsample(nn.Module):
    def __init__(self, channels: int, operations: Operations, dtype: Any = None, device: Any = None):
        super().__init__()
        self.conv = operations.Conv2d(channels, channels, 3, stride=2, padding=0, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Asymmetric padding (right and bottom only), as the released weights were trained with.
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))


class Upsample(nn.Module):
    def __init__(self, channels: int, operations: Operations, dtype: Any = None, device: Any = None):
        super().__init__()
        self.conv = operations.Conv2d(channels, channels, 3, padding=1, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution: ``block`` and ``attn`` lists, plus ``downsample``/``upsample`` where there is one."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()


class _Middle(nn.Module):
    def __init__(self, channels: int, operations: Operations, dtype: Any, device: Any):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, operations, dtype, device)
        self.attn_1 = AttnBlock(channels, operations, dtype, device)
        self.block_2 = ResnetBlock(channels, channels, operations, dtype, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, config: VAEConfig, operations: Operations, dtype: Any = None, device: Any = None):
        super().__init__()
        self.conv_in = operations.Conv2d(config.in_channels, config.ch, 3, padding=1, dtype=dtype, device=device)
        self.down = nn.ModuleList()
        block_in = config.ch
        for level, mult in enumerate(config.ch_mult):
            stage = _Level()
            block_out = config.ch * mult
            for _ in range(config.num_res_blocks):
                stage.block.append(ResnetBlock(block_in, block_out, operations, dtype, device))
                block_in = block_out
                if level in config.attn_levels:
                    stage.attn.append(AttnBlock(block_in, operations, dtype, device))
            if level != len(config.ch_mult) - 1:
                stage.downsample = Downsample(block_in, operations, dtype, device)
            self.down.append(stage)
        self.mid = _Middle(block_in, operations, dtype, device)
        self.norm_out = _norm(block_in, operations, dtype, device)
        out = 2 * config.z_channels if config.double_z else config.z_channels
        self.conv_out = operations.Conv2d(block_in, out, 3, padding=1, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level, stage in enumerate(self.down):
            for index, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn) > 0:
                    h = stage.attn[index](h)
            if level != len(self.down) - 1:
                h = stage.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, config: VAEConfig, operations: Operations, dtype: Any = None, device: Any = None):
        super().__init__()
        block_in = config.ch * config.ch_mult[-1]
        self.conv_in = operations.Conv2d(config.z_channels, block_in, 3, padding=1, dtype=dtype, device=device)
        self.mid = _Middle(block_in, operations, dtype, device)
        stages: list[_Level] = []
        for level in reversed(range(len(config.ch_mult))):
            stage = _Level()
            block_out = config.ch * config.ch_mult[level]
            for _ in range(config.num_res_blocks + 1):
                stage.block.append(ResnetBlock(block_in, block_out, operations, dtype, device))
                block_in = block_out
                if level in config.attn_levels:
                    stage.attn.append(AttnBlock(block_in, operations, dtype, device))
            if level != 0:
                stage.upsample = Upsample(block_in, operations, dtype, device)
            stages.insert(0, stage)
        self.up = nn.ModuleList(stages)
        self.norm_out = _norm(block_in, operations, dtype, device)
        self.conv_out = operations.Conv2d(block_in, config.out_ch, 3, padding=1, dtype=dtype, device=device)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(range(len(self.up))):
            stage = self.up[level]
            for index, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn) > 0:
                    h = stage.attn[index](h)
            if level != 0:
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    def __init__(self, config: VAEConfig, dtype: Any = None, device: Any = None,
                 operations: Operations = ops_module.disable_weight_init):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config, operations, dtype, device)
        self.decoder = Decoder(config, operations, dtype, device)
        z = 2 * config.z_channels if config.double_z else config.z_channels
        self.quant_conv = operations.Conv2d(z, 2 * config.embed_dim if config.double_z else config.embed_dim, 1,
                                            dtype=dtype, device=device)
        self.post_quant_conv = operations.Conv2d(config.embed_dim, config.z_channels, 1, dtype=dtype, device=device)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior's mean (the mode), as ComfyUI encodes."""
        moments = self.quant_conv(self.encoder(x))
        return moments[:, :self.config.embed_dim] if self.config.double_z else moments

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))


class VAE:
    """A loaded autoencoder with ComfyUI's ``comfy.sd.VAE`` interface: images are (B, H, W, C) in [0, 1]."""

    working_dtypes = (torch.bfloat16, torch.float32)

    def __init__(self, sd: Optional[Mapping[str, torch.Tensor]] = None, device: Optional[torch.device] = None,
                 dtype: Optional[torch.dtype] = None, config: Optional[VAEConfig] = None,
                 first_stage_model: Optional[AutoencoderKL] = None, ckpt_name: str = ""):
        from comfyui_core_nodes.loading import load_into
        from comfyui_core_nodes.model_patcher import ModelPatcher

        self.ckpt_name = ckpt_name
        self.device = device if device is not None else model_management.vae_device()
        self.vae_dtype = dtype if dtype is not None else model_management.vae_dtype(self.device, self.working_dtypes)
        self.output_device = model_management.intermediate_device()
        if first_stage_model is None:
            if sd is None:
                raise ValueError("a VAE needs a state dict or a model")
            config = config if config is not None else vae_config_from_state_dict(sd)
            with torch.device("meta"):
                first_stage_model = AutoencoderKL(config, dtype=self.vae_dtype)
            load_into(first_stage_model, sd, self.vae_dtype, what="VAE")
        self.first_stage_model = first_stage_model.eval()
        self.config = first_stage_model.config
        self.latent_channels = self.config.embed_dim
        self.downscale_ratio = self.upscale_ratio = self.config.downscale_ratio
        self.output_channels = self.config.out_ch
        self.latent_dim = 2
        self.patcher = ModelPatcher(self.first_stage_model, load_device=self.device,
                                    offload_device=model_management.vae_offload_device())

    def clone(self) -> "VAE":
        other = VAE.__new__(VAE)
        other.__dict__.update(self.__dict__)
        other.patcher = self.patcher.clone()
        return other

    # Memory estimates for batching (bytes), as ComfyUI sizes them for the KL autoencoder.
    def memory_used_encode(self, shape: tuple[int, ...], dtype: torch.dtype) -> float:
        return 1767 * shape[2] * shape[3] * model_management.dtype_size(dtype)

    def memory_used_decode(self, shape: tuple[int, ...], dtype: torch.dtype) -> float:
        return 2178 * shape[2] * shape[3] * 64 * model_management.dtype_size(dtype)

    def spacial_compression_encode(self) -> int:
        return self.downscale_ratio

    def spacial_compression_decode(self) -> int:
        return self.upscale_ratio

    def temporal_compression_decode(self) -> None:
        return None

    def throw_exception_if_invalid(self) -> None:
        if self.first_stage_model is None:
            raise RuntimeError("The VAE is invalid: the checkpoint this came from holds no VAE")

    def get_sd(self) -> dict[str, torch.Tensor]:
        return self.first_stage_model.state_dict()

    @staticmethod
    def process_input(image: torch.Tensor) -> torch.Tensor:
        return image * 2.0 - 1.0

    @staticmethod
    def process_output(image: torch.Tensor) -> torch.Tensor:
        return torch.clamp((image + 1.0) / 2.0, min=0.0, max=1.0)

    def vae_encode_crop_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Crop (centred) to a multiple of the downscale ratio and keep the colour channels."""
        ratio = self.downscale_ratio
        for dim in (1, 2):
            size = (pixels.shape[dim] // ratio) * ratio
            if size != pixels.shape[dim]:
                pixels = pixels.narrow(dim, (pixels.shape[dim] % ratio) // 2, size)
        return pixels[..., :self.output_channels]

    def _encode_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.first_stage_model.encode(self.process_input(pixels).to(self.vae_dtype).to(self.device)).float()

    def _decode_batch(self, samples: torch.Tensor) -> torch.Tensor:
        return self.first_stage_model.decode(samples.to(self.vae_dtype).to(self.device)).float()

    def _batch_size(self, memory_per_item: float) -> int:
        free = model_management.get_free_memory(self.device)
        return max(1, int(free / max(1.0, memory_per_item)))

    def decode(self, samples_in: torch.Tensor, vae_options: Optional[dict] = None) -> torch.Tensor:
        """Latents (B, C, h, w) to images (B, H, W, 3); falls back to tiles when memory runs out."""
        self.throw_exception_if_invalid()
        memory = self.memory_used_decode(samples_in.shape, self.vae_dtype)
        model_management.load_models_gpu([self.patcher], memory_required=memory)
        try:
            batch = self._batch_size(memory)
            pixels = torch.cat([self.process_output(self._decode_batch(samples_in[start:start + batch])
                                                    .to(self.output_device))
                                for start in range(0, samples_in.shape[0], batch)])
        except model_management.OOM_EXCEPTION:
            logger.warning("Out of memory while decoding; decoding in tiles instead")
            model_management.soft_empty_cache()
            pixels = self.decode_tiled_(samples_in)
        return pixels.to(self.output_device).movedim(1, -1)

    def encode(self, pixel_samples: torch.Tensor) -> torch.Tensor:
        """Images (B, H, W, C) to latents (B, C, H/8, W/8) (unscaled: the model's latent format scales later)."""
        self.throw_exception_if_invalid()
        pixels = self.vae_encode_crop_pixels(pixel_samples).movedim(-1, 1)
        memory = self.memory_used_encode(pixels.shape, self.vae_dtype)
        model_management.load_models_gpu([self.patcher], memory_required=memory)
        try:
            batch = self._batch_size(memory)
            return torch.cat([self._encode_batch(pixels[start:start + batch]).to(self.output_device)
                              for start in range(0, pixels.shape[0], batch)])
        except model_management.OOM_EXCEPTION:
            logger.warning("Out of memory while encoding; encoding in tiles instead")
            model_management.soft_empty_cache()
            return self.encode_tiled_(pixels)

    def decode_tiled_(self, samples: torch.Tensor, tile_x: int = 64, tile_y: int = 64, overlap: int = 16
                      ) -> torch.Tensor:
        """Decode in overlapping tiles three times (square, wide, tall tiles) and average, hiding seams."""
        from comfyui_core_nodes import utils

        steps = sum(samples.shape[0] * utils.get_tiled_scale_steps(samples.shape[3], samples.shape[2], tx, ty, overlap)
                    for tx, ty in ((tile_x, tile_y), (tile_x // 2, tile_y * 2), (tile_x * 2, tile_y // 2)))
        pbar = utils.ProgressBar(steps)
        total = sum(utils.tiled_scale(samples, self._decode_batch, tx, ty, overlap, upscale_amount=self.upscale_ratio,
                                      out_channels=self.output_channels, output_device=self.output_device, pbar=pbar)
                    for tx, ty in ((tile_x // 2, tile_y * 2), (tile_x * 2, tile_y // 2), (tile_x, tile_y)))
        return self.process_output(total / 3.0)

    def encode_tiled_(self, pixel_samples: torch.Tensor, tile_x: int = 512, tile_y: int = 512, overlap: int = 64
                      ) -> torch.Tensor:
        """``pixel_samples`` is (B, C, H, W) here."""
        from comfyui_core_nodes import utils

        steps = sum(pixel_samples.shape[0] * utils.get_tiled_scale_steps(pixel_samples.shape[3],
                                                                         pixel_samples.shape[2], tx, ty, overlap)
                    for tx, ty in ((tile_x, tile_y), (tile_x // 2, tile_y * 2), (tile_x * 2, tile_y // 2)))
        pbar = utils.ProgressBar(steps)
        total = sum(utils.tiled_scale(pixel_samples, self._encode_batch, tx, ty, overlap,
                                      upscale_amount=1 / self.downscale_ratio, out_channels=self.latent_channels,
                                      output_device=self.output_device, pbar=pbar)
                    for tx, ty in ((tile_x, tile_y), (tile_x * 2, tile_y // 2), (tile_x // 2, tile_y * 2)))
        return total / 3.0

    def decode_tiled(self, samples: torch.Tensor, tile_x: Optional[int] = None, tile_y: Optional[int] = None,
                     overlap: Optional[int] = None, tile_t: Optional[int] = None,
                     overlap_t: Optional[int] = None) -> torch.Tensor:
        self.throw_exception_if_invalid()
        model_management.load_models_gpu([self.patcher],
                                         memory_required=self.memory_used_decode(samples.shape, self.vae_dtype))
        arguments = {name: value for name, value in (("tile_x", tile_x), ("tile_y", tile_y), ("overlap", overlap))
                     if value is not None}
        return self.decode_tiled_(samples, **arguments).movedim(1, -1)

    def encode_tiled(self, pixel_samples: torch.Tensor, tile_x: Optional[int] = None, tile_y: Optional[int] = None,
                     overlap: Optional[int] = None, tile_t: Optional[int] = None,
                     overlap_t: Optional[int] = None) -> torch.Tensor:
        self.throw_exception_if_invalid()
        pixels = self.vae_encode_crop_pixels(pixel_samples).movedim(-1, 1)
        model_management.load_models_gpu([self.patcher],
                                         memory_required=self.memory_used_encode(pixels.shape, self.vae_dtype))
        arguments = {name: value for name, value in (("tile_x", tile_x), ("tile_y", tile_y), ("overlap", overlap))
                     if value is not None}
        return self.encode_tiled_(pixels, **arguments)


__all__ = ["AttnBlock", "AutoencoderKL", "Decoder", "Encoder", "ResnetBlock", "VAE", "VAEConfig",
           "vae_config_from_state_dict"]
