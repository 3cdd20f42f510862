"""CLIP vision towers (ViT-L/14, ViT-H/14, ViT-bigG/14) in transformers' layout, for CLIPVisionEncode/unCLIP.

Files in the OpenCLIP layout (``visual.transformer.resblocks.N...``) are converted on load.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .model import Encoder, TextEncoderConfig, convert_resblocks, heads_for_width

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipVisionLoadError(ValueError):
    """A file that holds no CLIP vision tower this plugin knows."""


@dataclass(frozen=True)
class VisionConfig:
    width: int
    layers: int
    heads: int
    mlp: int
    activation: str
    projection: int
    patch_size: int = 14
    image_size: int = 224

    def encoder_config(self) -> TextEncoderConfig:
        return TextEncoderConfig(width=self.width, layers=self.layers, heads=self.heads, mlp=self.mlp,
                                 activation=self.activation, projection=self.projection)


# The released towers, told apart by depth (as ComfyUI does): (minimum layers, config).
KNOWN_TOWERS: tuple[tuple[int, VisionConfig], ...] = (
    (48, VisionConfig(1664, 48, 16, 8192, "gelu", 1280)),       # ViT-bigG/14
    (32, VisionConfig(1280, 32, 16, 5120, "gelu", 1024)),       # ViT-H/14
    (24, VisionConfig(1024, 24, 16, 4096, "quick_gelu", 768)),  # ViT-L/14 (224 or 336 px)
)


class VisionTransformer(nn.Module):
    """``vision_model.*``: patch and position embeddings, pre-norm, encoder layers, post-norm."""

    def __init__(self, config: VisionConfig, device=None, dtype=None) -> None:
        super().__init__()
        patches = (config.image_size // config.patch_size) ** 2
        self.embeddings = nn.Module()
        self.embeddings.class_embedding = nn.Parameter(torch.empty(config.width, device=device, dtype=dtype))
        self.embeddings.patch_embedding = ops.manual_cast.Conv2d(
            3, config.width, kernel_size=config.patch_size, stride=config.patch_size, bias=False,
            device=device, dtype=dtype)
        self.embeddings.position_embedding = ops.manual_cast.Embedding(patches + 1, config.width,
                                                                       device=device, dtype=dtype)
        self.pre_layrnorm = ops.manual_cast.LayerNorm(config.width, device=device, dtype=dtype)
        self.encoder = Encoder(config.encoder_config(), device=device, dtype=dtype)
        self.post_layernorm = ops.manual_cast.LayerNorm(config.width, device=device, dtype=dtype)


class ClipVisionModel(nn.Module):
    """``vision_model.*`` and ``visual_projection.weight``."""

    def __init__(self, config: VisionConfig, device=None, dtype=None) -> None:
        super().__init__()
        self.config = config
        self.vision_model = VisionTransformer(config, device=device, dtype=dtype)
        self.visual_projection = ops.manual_cast.Linear(config.width, config.projection, bias=False,
                                                        device=device, dtype=dtype)

    def forward(self, pixels: torch.Tensor, keep_layer: int = -2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Last hidden state, the ``keep_layer`` hidden state, and the projected class-token embedding."""
        model = self.vision_model
        embeddings = model.embeddings
        x = embeddings.patch_embedding(pixels).flatten(2).transpose(1, 2)
        cls = embeddings.class_embedding.to(device=x.device, dtype=x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + embeddings.position_embedding.weight.to(device=x.device, dtype=x.dtype)
        x = model.pre_layrnorm(x)
        x, kept = model.encoder(x, None, keep_layer)
        pooled = model.post_layernorm(x[:, 0, :])
        return x, kept, self.visual_projection(pooled)


def clip_preprocess(image: torch.Tensor, size: int = 224, mean: tuple[float, ...] = CLIP_MEAN,
                    std: tuple[float, ...] = CLIP_STD, crop: bool = True) -> torch.Tensor:
    """IMAGE (B, H, W, C) to normalised pixels (B, 3, size, size): shorter side to ``size`` and a centre
    crop, or a plain resize; quantised to 8 bits first, as CLIP's training images were."""
    image = image[..., :3].movedim(-1, 1)
    if image.shape[2] != size or image.shape[3] != size:
        if crop:
            scale = size / min(image.shape[2], image.shape[3])
            target = (round(scale * image.shape[2]), round(scale * image.shape[3]))
        else:
            target = (size, size)
        image = F.interpolate(image, size=target, mode="bicubic", antialias=True)
        top, left = (image.shape[2] - size) // 2, (image.shape[3] - size) // 2
        image = image[:, :, top:top + size, left:left + size]
    image = torch.clip(255.0 * image, 0, 255).round() / 255.0
    mean_tensor = torch.tensor(mean, device=image.device, dtype=image.dtype).view(3, 1, 1)
    std_tensor = torch.tensor(std, device=image.device, dtype=image.dtype).view(3, 1, 1)
    return (image - mean_tensor) / std_tensor


class Output:
    """CLIP_VISION_OUTPUT: attributes that can also be read as items (``output["image_embeds"]``)."""

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        setattr(self, key, value)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


class ClipVision:
    """The CLIP_VISION object: a vision tower on the model patcher, with ComfyUI's ``encode_image``."""

    def __init__(self, model: ClipVisionModel, load_device: torch.device, offload_device: torch.device) -> None:
        from ..model_patcher import ModelPatcher

        self.model = model
        self.image_size = model.config.image_size
        self.load_device = load_device
        self.patcher = ModelPatcher(model, load_device=load_device, offload_device=offload_device)

    def load_sd(self, state_dict: dict[str, torch.Tensor]):
        return self.model.load_state_dict(state_dict, strict=False)

    def get_sd(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def encode_image(self, image: torch.Tensor, crop: bool = True) -> Output:
        from .. import model_management

        model_management.load_models_gpu([self.patcher])
        pixels = clip_preprocess(image.to(self.load_device), size=self.image_size, crop=crop).float()
        with torch.no_grad():
            last, penultimate, embeds = self.model(pixels, keep_layer=-2)
        device = model_management.intermediate_device()
        output = Output()
        output["last_hidden_state"] = last.to(device)
        output["image_embeds"] = embeds.to(device)
        output["penultimate_hidden_states"] = penultimate.to(device)
        output["image_sizes"] = [pixels.shape[1:]] * pixels.shape[0]
        output["mm_projected"] = None
        return output


_OPEN_CLIP_VISUAL_KEYS = {
    "class_embedding": "vision_model.embeddings.class_embedding",
    "conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "ln_post.weight": "vision_model.post_layernorm.weight",
    "ln_post.bias": "vision_model.post_layernorm.bias",
}


def convert_open_clip_visual(state_dict: dict[str, torch.Tensor], prefix: str = "visual.") -> dict[str, torch.Tensor]:
    """An OpenCLIP visual tower under ``prefix`` in transformers' layout."""
    own = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    converted: dict[str, torch.Tensor] = {}
    for key, value in convert_resblocks(own, "vision_model.encoder.layers.").items():
        if key == "proj":
            converted["visual_projection.weight"] = value.transpose(0, 1).contiguous()
        else:
            converted[_OPEN_CLIP_VISUAL_KEYS.get(key, key)] = value
    return converted


def vision_config_from_state_dict(state_dict: dict[str, torch.Tensor], activation: str) -> VisionConfig:
    """The released tower with this depth, or (for small test towers) sizes read from the shapes."""
    if "vision_model.encoder.layers.0.layer_norm1.weight" not in state_dict:
        found = ", ".join(sorted(state_dict)[:8])
        raise ClipVisionLoadError(f"not a CLIP vision model (no vision_model.encoder layers); first keys: {found}")
    layers = 0
    while f"vision_model.encoder.layers.{layers}.layer_norm1.weight" in state_dict:
        layers += 1
    patch = state_dict["vision_model.embeddings.patch_embedding.weight"]
    positions = state_dict["vision_model.embeddings.position_embedding.weight"].shape[0]
    image_size = round((positions - 1) ** 0.5) * patch.shape[-1]
    for minimum, config in KNOWN_TOWERS:
        if layers >= minimum and patch.shape[0] == config.width:
            return VisionConfig(**{**config.__dict__, "image_size": image_size})
    width = patch.shape[0]
    projection = state_dict.get("visual_projection.weight")
    return VisionConfig(width=width, layers=layers, heads=heads_for_width(width),
                        mlp=state_dict["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
                        activation=activation, projection=width if projection is None else projection.shape[0],
                        patch_size=patch.shape[-1], image_size=image_size)


def load_clip_vision_state_dict(state_dict: dict[str, torch.Tensor], prefix: str = "",
                                load_device: Optional[torch.device] = None) -> ClipVision:
    """A ClipVision from a state dict in transformers' or OpenCLIP's layout (``prefix``: e.g. ``embedder.model.visual.``)."""
    from .. import model_management

    activation = "quick_gelu"
    if f"{prefix}transformer.resblocks.0.attn.in_proj_weight" in state_dict or \
            "visual.transformer.resblocks.0.attn.in_proj_weight" in state_dict:
        state_dict = convert_open_clip_visual(state_dict, prefix or "visual.")
        activation = "gelu"
    elif prefix:
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    config = vision_config_from_state_dict(state_dict, activation)
    load_device = load_device or model_management.text_encoder_device()
    offload_device = model_management.text_encoder_offload_device()
    dtype = model_management.text_encoder_dtype(load_device)
    model = ClipVisionModel(config, device="meta")
    wanted = set(model.state_dict())
    missing = sorted(wanted - set(state_dict))
    if missing:
        raise ClipVisionLoadError(f"the CLIP vision model is missing weights: {missing[:10]}")
    model.load_state_dict({k: v for k, v in state_dict.items() if k in wanted}, strict=True, assign=True)
    model = model.to(device=offload_device, dtype=dtype).eval().requires_grad_(False)
    return ClipVision(model, load_device, offload_device)


def load_clip_vision(path: str) -> ClipVision:
    """CLIPVisionLoader: a ClipVision from a file."""
    from ..loading import load_torch_file

    return load_clip_vision_state_dict(load_torch_file(path))
