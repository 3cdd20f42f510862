"""The CLIP text transformer in transformers' key layout, used for CLIP-L and the OpenCLIP towers.

OpenCLIP checkpoints (``transformer.resblocks.N.attn.in_proj_weight``...) are converted to this
layout on load (``convert_open_clip``), as ComfyUI does, so LoRA keys and saved files agree with it.
Text encoders compute in float32 whatever dtype their weights are stored in (as ComfyUI's do).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import attention, ops

VOCAB_SIZE = 49408
CONTEXT_LENGTH = 77
END_TOKEN_ID = 49407


def heads_for_width(width: int) -> int:
    """Attention heads of a text encoder this wide: 64-wide heads (12, 16, 20 for CLIP-L, H, bigG).

    Narrow test encoders (below 256) use 16-wide heads, since a state dict does not record heads.
    """
    return width // 64 if width >= 256 else max(1, width // 16)


@dataclass(frozen=True)
class TextEncoderConfig:
    """Sizes of a CLIP text transformer."""
    width: int
    layers: int
    heads: int
    mlp: int
    activation: str  # "quick_gelu" (OpenAI CLIP-L) or "gelu" (OpenCLIP)
    projection: int
    vocab_size: int = VOCAB_SIZE
    positions: int = CONTEXT_LENGTH

    @classmethod
    def of(cls, width: int, layers: int, activation: str, mlp: Optional[int] = None,
           projection: Optional[int] = None, vocab_size: int = VOCAB_SIZE,
           positions: int = CONTEXT_LENGTH) -> "TextEncoderConfig":
        return cls(width=width, layers=layers, heads=heads_for_width(width), mlp=mlp or 4 * width,
                   activation=activation, projection=projection or width, vocab_size=vocab_size,
                   positions=positions)


CLIP_L = TextEncoderConfig.of(768, 12, "quick_gelu")
OPEN_CLIP_H = TextEncoderConfig.of(1024, 24, "gelu")
OPEN_CLIP_BIGG = TextEncoderConfig.of(1280, 32, "gelu")


# Layers from the plugin's ops: weights are cast to the input's dtype and device on each call, which
# also lets the model patcher stream weights (low VRAM) and apply LoRA patches on the fly.
CastLinear = ops.manual_cast.Linear
CastLayerNorm = ops.manual_cast.LayerNorm
CastEmbedding = ops.manual_cast.Embedding


ACTIVATIONS = {
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "gelu": F.gelu,
}


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, device=None, dtype=None) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = CastLinear(width, width, device=device, dtype=dtype)
        self.k_proj = CastLinear(width, width, device=device, dtype=dtype)
        self.v_proj = CastLinear(width, width, device=device, dtype=dtype)
        self.out_proj = CastLinear(width, width, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        # ComfyUI's choice for small inputs: SDPA where PyTorch attention is on (CUDA, XPU, or asked for),
        # plain attention elsewhere (CPU, MPS), which is what its prompt embeddings there are made with.
        attend = attention.optimized_attention_for_device(x.device, mask=mask is not None, small_input=True)
        return self.out_proj(attend(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads, mask=mask))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, activation: str, device=None, dtype=None) -> None:
        super().__init__()
        self.fc1 = CastLinear(width, hidden, device=device, dtype=dtype)
        self.fc2 = CastLinear(hidden, width, device=device, dtype=dtype)
        self.activation = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, config: TextEncoderConfig, device=None, dtype=None) -> None:
        super().__init__()
        self.layer_norm1 = CastLayerNorm(config.width, device=device, dtype=dtype)
        self.self_attn = SelfAttention(config.width, config.heads, device=device, dtype=dtype)
        self.layer_norm2 = CastLayerNorm(config.width, device=device, dtype=dtype)
        self.mlp = MLP(config.width, config.mlp, config.activation, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, config: TextEncoderConfig, device=None, dtype=None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config, device=device, dtype=dtype) for _ in range(config.layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor,
                keep_layer: Optional[int] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The last layer's output and, when ``keep_layer`` is given, that layer's (negative counts back)."""
        if keep_layer is not None and keep_layer < 0:
            keep_layer += len(self.layers)
        kept = None
        for index, layer in enumerate(self.layers):
            x = layer(x, mask)
            if index == keep_layer:
                kept = x.clone()
        return x, kept


class Embeddings(nn.Module):
    def __init__(self, config: TextEncoderConfig, device=None, dtype=None) -> None:
        super().__init__()
        self.token_embedding = CastEmbedding(config.vocab_size, config.width, device=device, dtype=dtype)
        self.position_embedding = CastEmbedding(config.positions, config.width, device=device, dtype=dtype)


class TextTransformer(nn.Module):
    """``text_model.*``: embeddings, encoder layers, final layer norm."""

    def __init__(self, config: TextEncoderConfig, device=None, dtype=None) -> None:
        super().__init__()
        self.embeddings = Embeddings(config, device=device, dtype=dtype)
        self.encoder = Encoder(config, device=device, dtype=dtype)
        self.final_layer_norm = CastLayerNorm(config.width, device=device, dtype=dtype)


@dataclass
class TextEncoderOutput:
    last: torch.Tensor                  # final layer, after the final layer norm
    hidden: Optional[torch.Tensor]      # the requested intermediate layer
    pooled: torch.Tensor                # ``last`` at each sequence's end token
    projected: torch.Tensor             # ``pooled`` through text_projection


class ClipTextModel(nn.Module):
    """transformers' ``CLIPTextModel`` + ``text_projection``, keys ``text_model.*``, ``text_projection.weight``."""

    def __init__(self, config: TextEncoderConfig, device=None, dtype=None) -> None:
        super().__init__()
        self.config = config
        self.num_layers = config.layers
        self.text_model = TextTransformer(config, device=device, dtype=dtype)
        self.text_projection = CastLinear(config.width, config.projection, bias=False, device=device, dtype=dtype)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_model.embeddings.token_embedding

    def forward(self, embeds: torch.Tensor, pooled_positions: list[int], keep_layer: Optional[int] = None,
                normalize_hidden: bool = True) -> TextEncoderOutput:
        """Run on token embeddings ``embeds`` (B, T, W); pool each row at ``pooled_positions``."""
        text = self.text_model
        x = embeds + text.embeddings.position_embedding.weight.to(device=embeds.device, dtype=embeds.dtype)
        length = x.shape[1]
        causal = torch.full((length, length), -torch.finfo(x.dtype).max, dtype=x.dtype, device=x.device).triu_(1)
        x, hidden = text.encoder(x, causal, keep_layer)
        x = text.final_layer_norm(x)
        if hidden is not None and normalize_hidden:
            hidden = text.final_layer_norm(hidden)
        pooled = x[torch.arange(x.shape[0], device=x.device), torch.tensor(pooled_positions, device=x.device)]
        return TextEncoderOutput(last=x, hidden=hidden, pooled=pooled, projected=self.text_projection(pooled))


# --- state dict layouts ------------------------------------------------------------------------

_OPEN_CLIP_RENAMES = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}


def is_open_clip_layout(state_dict: dict[str, torch.Tensor]) -> bool:
    return "transformer.resblocks.0.ln_1.weight" in state_dict


def convert_resblocks(state_dict: dict[str, torch.Tensor], layers_prefix: str) -> dict[str, torch.Tensor]:
    """OpenCLIP ``transformer.resblocks.N.*`` keys renamed to ``{layers_prefix}N.*`` (q/k/v split); other
    keys unchanged. Shared by the text and vision towers."""
    converted: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith("transformer.resblocks."):
            converted[key] = value
            continue
        index, _, rest = key[len("transformer.resblocks."):].partition(".")
        block = f"{layers_prefix}{index}."
        if rest.startswith("attn.in_proj_"):
            kind = rest[len("attn.in_proj_"):]
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                converted[f"{block}self_attn.{name}.{kind}"] = part
            continue
        module, _, parameter = rest.rpartition(".")
        converted[f"{block}{_OPEN_CLIP_RENAMES.get(module, module)}.{parameter}"] = value
    return converted


_OPEN_CLIP_TEXT_KEYS = {
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
}


def convert_open_clip(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An OpenCLIP text tower (keys without prefix) in transformers' layout; ``logit_scale`` is kept."""
    converted: dict[str, torch.Tensor] = {}
    for key, value in convert_resblocks(state_dict, "text_model.encoder.layers.").items():
        if key == "text_projection":
            converted["text_projection.weight"] = value.transpose(0, 1).contiguous()
        else:
            converted[_OPEN_CLIP_TEXT_KEYS.get(key, key)] = value
    return converted


def convert_to_open_clip(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reverse of ``convert_open_clip``, for saving checkpoints in their released layout."""
    renames = {new: old for old, new in _OPEN_CLIP_RENAMES.items()}
    converted: dict[str, torch.Tensor] = {}
    pending: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if key.startswith("text_model.encoder.layers."):
            index, _, rest = key[len("text_model.encoder.layers."):].partition(".")
            block = f"transformer.resblocks.{index}."
            module, _, parameter = rest.rpartition(".")
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                pending.setdefault((block, parameter), {})[module] = value
                continue
            converted[f"{block}{renames.get(module, module)}.{parameter}"] = value
        elif key == "text_model.embeddings.position_embedding.weight":
            converted["positional_embedding"] = value
        elif key == "text_model.embeddings.token_embedding.weight":
            converted["token_embedding.weight"] = value
        elif key.startswith("text_model.final_layer_norm."):
            converted["ln_final." + key[len("text_model.final_layer_norm."):]] = value
        elif key == "text_projection.weight":
            converted["text_projection"] = value.transpose(0, 1).contiguous()
        elif key != "text_model.embeddings.position_ids":
            converted[key] = value
    for (block, parameter), parts in pending.items():
        converted[f"{block}attn.in_proj_{parameter}"] = torch.cat(
            [parts["self_attn.q_proj"], parts["self_attn.k_proj"], parts["self_attn.v_proj"]], dim=0)
    return converted


def config_from_state_dict(state_dict: dict[str, torch.Tensor], activation: str) -> TextEncoderConfig:
    """Sizes read from a transformers-layout state dict (keys without prefix)."""
    tokens = state_dict["text_model.embeddings.token_embedding.weight"]
    positions = state_dict["text_model.embeddings.position_embedding.weight"]
    layers = 0
    while f"text_model.encoder.layers.{layers}.mlp.fc1.weight" in state_dict:
        layers += 1
    projection = state_dict.get("text_projection.weight")
    return TextEncoderConfig.of(
        width=tokens.shape[1], layers=layers, activation=activation,
        mlp=state_dict["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        projection=None if projection is None else projection.shape[0],
        vocab_size=tokens.shape[0], positions=positions.shape[0])
