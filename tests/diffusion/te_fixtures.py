"""Tiny random-weight text encoders in the real single-file layouts (CLIP-L HF keys, OpenCLIP keys).

The vocabulary keeps its real size (49408) so the real tokenizer's ids index it; only widths,
depths and MLP sizes shrink. The loader infers every size from the shapes, and the number of heads
from the width (``comfyui_core_nodes.text_encoders.heads_for_width``).
"""
from __future__ import annotations

import math

import torch

VOCAB_SIZE = 49408
CONTEXT_LENGTH = 77


def _fill(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Deterministic values in the ranges a trained encoder has (norm weights near 1, small rest)."""
    generator = torch.Generator().manual_seed(seed)
    state_dict: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        is_norm_weight = key.endswith(".weight") and len(shape) == 1
        if is_norm_weight:
            state_dict[key] = 1.0 + 0.1 * noise
        elif key.endswith("embedding.weight") or key.endswith("positional_embedding"):
            state_dict[key] = 0.5 * noise
        else:
            state_dict[key] = noise / math.sqrt(shape[-1]) if len(shape) > 1 else 0.05 * noise
    return state_dict


def _encoder_layer_shapes(prefix: str, width: int, layers: int, mlp: int) -> dict[str, tuple[int, ...]]:
    """transformers-layout encoder layers (``{prefix}N.self_attn.q_proj.weight``...)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for n in range(layers):
        block = f"{prefix}{n}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{block}self_attn.{proj}.weight"] = (width, width)
            shapes[f"{block}self_attn.{proj}.bias"] = (width,)
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[f"{block}{norm}.weight"] = (width,)
            shapes[f"{block}{norm}.bias"] = (width,)
        shapes[f"{block}mlp.fc1.weight"] = (mlp, width)
        shapes[f"{block}mlp.fc1.bias"] = (mlp,)
        shapes[f"{block}mlp.fc2.weight"] = (width, mlp)
        shapes[f"{block}mlp.fc2.bias"] = (width,)
    return shapes


def tiny_clip_l_state_dict(
    prefix: str = "",
    *,
    width: int = 32,
    layers: int = 2,
    mlp: int | None = None,
    projection: int | None = None,
    position_ids: bool = True,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A CLIP-L-layout text encoder: ``{prefix}text_model.*`` (+ ``text_projection.weight`` if asked).

    ``prefix`` is e.g. ``"cond_stage_model.transformer."`` (SD1), ``"conditioner.embedders.0.transformer."``
    (SDXL) or ``""`` (a standalone clip_l file). ``position_ids`` adds the int64 buffer the released
    SD1/SDXL files carry.
    """
    mlp = mlp or 4 * width
    shapes: dict[str, tuple[int, ...]] = {
        "text_model.embeddings.token_embedding.weight": (VOCAB_SIZE, width),
        "text_model.embeddings.position_embedding.weight": (CONTEXT_LENGTH, width),
    }
    shapes.update(_encoder_layer_shapes("text_model.encoder.layers.", width, layers, mlp))
    shapes["text_model.final_layer_norm.weight"] = (width,)
    shapes["text_model.final_layer_norm.bias"] = (width,)
    if projection is not None:
        shapes["text_projection.weight"] = (projection, width)
    state_dict = _fill(shapes, seed)
    if position_ids:
        state_dict["text_model.embeddings.position_ids"] = torch.arange(CONTEXT_LENGTH).unsqueeze(0)
    return {prefix + key: value for key, value in state_dict.items()}


def tiny_open_clip_state_dict(
    prefix: str = "",
    width: int = 32,
    layers: int = 2,
    heads: int = 2,
    *,
    mlp: int | None = None,
    projection: int | None = None,
    seed: int = 1,
) -> dict[str, torch.Tensor]:
    """An OpenCLIP-layout text tower (``{prefix}transformer.resblocks.N.*``, ``ln_final``, ...).

    ``prefix`` is e.g. ``"cond_stage_model.model."`` (SD2), ``"conditioner.embedders.1.model."``
    (SDXL base) or ``"conditioner.embedders.0.model."`` (SDXL refiner). ``heads`` must be what the
    loader infers from ``width`` (checked here, since a state dict cannot record it).
    """
    from comfyui_core_nodes.text_encoders import heads_for_width

    if heads != heads_for_width(width):
        raise ValueError(f"width {width} loads with {heads_for_width(width)} heads, not {heads}")
    mlp = mlp or 4 * width
    projection = projection or width
    shapes: dict[str, tuple[int, ...]] = {
        "token_embedding.weight": (VOCAB_SIZE, width),
        "positional_embedding": (CONTEXT_LENGTH, width),
    }
    for n in range(layers):
        block = f"transformer.resblocks.{n}."
        shapes[f"{block}attn.in_proj_weight"] = (3 * width, width)
        shapes[f"{block}attn.in_proj_bias"] = (3 * width,)
        shapes[f"{block}attn.out_proj.weight"] = (width, width)
        shapes[f"{block}attn.out_proj.bias"] = (width,)
        for norm in ("ln_1", "ln_2"):
            shapes[f"{block}{norm}.weight"] = (width,)
            shapes[f"{block}{norm}.bias"] = (width,)
        shapes[f"{block}mlp.c_fc.weight"] = (mlp, width)
        shapes[f"{block}mlp.c_fc.bias"] = (mlp,)
        shapes[f"{block}mlp.c_proj.weight"] = (width, mlp)
        shapes[f"{block}mlp.c_proj.bias"] = (width,)
    shapes["ln_final.weight"] = (width,)
    shapes["ln_final.bias"] = (width,)
    shapes["text_projection"] = (width, projection)
    state_dict = _fill(shapes, seed)
    state_dict["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    return {prefix + key: value for key, value in state_dict.items()}


def tiny_clip_vision_state_dict(prefix: str = "", *, width: int = 32, layers: int = 3, patch_size: int = 14,
                                image_size: int = 28, projection: int = 16, seed: int = 2) -> dict[str, torch.Tensor]:
    """A CLIP vision tower in transformers' layout (``vision_model.*``, ``visual_projection.weight``)."""
    positions = (image_size // patch_size) ** 2 + 1
    shapes: dict[str, tuple[int, ...]] = {
        "vision_model.embeddings.class_embedding": (width,),
        "vision_model.embeddings.patch_embedding.weight": (width, 3, patch_size, patch_size),
        "vision_model.embeddings.position_embedding.weight": (positions, width),
        "vision_model.pre_layrnorm.weight": (width,),
        "vision_model.pre_layrnorm.bias": (width,),
    }
    shapes.update(_encoder_layer_shapes("vision_model.encoder.layers.", width, layers, 4 * width))
    shapes["vision_model.post_layernorm.weight"] = (width,)
    shapes["vision_model.post_layernorm.bias"] = (width,)
    shapes["visual_projection.weight"] = (projection, width)
    state_dict = _fill(shapes, seed)
    # The class embedding is a vector, not a norm weight: keep it small like the other embeddings.
    state_dict["vision_model.embeddings.class_embedding"] = 0.5 * torch.randn(
        width, generator=torch.Generator().manual_seed(seed + 100))
    return {prefix + key: value for key, value in state_dict.items()}
