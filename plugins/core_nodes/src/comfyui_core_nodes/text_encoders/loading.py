"""Finding, converting and building text encoders from checkpoints and text-encoder files.

Families and layouts are tables: which encoders a model family has and how each one encodes
(``FAMILIES``), and where a single-file checkpoint keeps them (``CHECKPOINT_LAYOUTS``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .encoder import ClipStack, ClipTextEncoder, EncoderSpec
from .model import (
    END_TOKEN_ID,
    config_from_state_dict,
    convert_open_clip,
    convert_to_open_clip,
    is_open_clip_layout,
)
from .tokenizer import EmbeddingDirectories, PromptTokenizer, TokenizerSpec

logger = logging.getLogger(__name__)


class TextEncoderLoadError(ValueError):
    """A file or checkpoint whose text encoders cannot be recognised or loaded."""


@dataclass(frozen=True)
class EncoderKind:
    """What a kind of encoder is: its activation, how it pads, the name its embeddings are filed under."""
    key: str
    activation: str
    pad_token: int


KINDS = {
    "l": EncoderKind("l", "quick_gelu", END_TOKEN_ID),
    "h": EncoderKind("h", "gelu", 0),
    "g": EncoderKind("g", "gelu", 0),
}


@dataclass(frozen=True)
class Family:
    """A model family's text encoders (in conditioning order), the one giving the pooled output,
    and the order its tokenizer lists them in."""
    encoders: tuple[EncoderSpec, ...]
    pooled_from: str
    tokenizer_keys: tuple[str, ...]


def _spec(key: str, layer_idx: Optional[int], normalize_hidden: bool, projected_pooled: bool) -> EncoderSpec:
    return EncoderSpec(key=key, pad_token=KINDS[key].pad_token, layer_idx=layer_idx,
                       normalize_hidden=normalize_hidden, projected_pooled=projected_pooled)


# ComfyUI's settings: SD1 uses CLIP-L's last layer and its unprojected pooled output; SD2 the
# penultimate layer of ViT-H with the final norm; SDXL the penultimate layers of CLIP-L and bigG
# without the final norm, joined, with bigG's projected pooled output.
FAMILIES: dict[str, Family] = {
    "sd1": Family((_spec("l", None, True, False),), "l", ("l",)),
    "sd2": Family((_spec("h", -2, True, True),), "h", ("h",)),
    "sdxl": Family((_spec("l", -2, False, True), _spec("g", -2, False, True)), "g", ("g", "l")),
    "sdxl_refiner": Family((_spec("g", -2, False, True),), "g", ("g", "l")),
}

# Where single-file checkpoints keep their text encoders, per family and encoder; most specific first.
CHECKPOINT_LAYOUTS: tuple[tuple[str, dict[str, str]], ...] = (
    ("sdxl", {"l": "conditioner.embedders.0.transformer.", "g": "conditioner.embedders.1.model."}),
    ("sdxl_refiner", {"g": "conditioner.embedders.0.model."}),
    ("sd2", {"h": "cond_stage_model.model."}),
    ("sd1", {"l": "cond_stage_model.transformer."}),
)
# SD2 checkpoints saved in the SGM layout use the refiner's prefix for ViT-H.
_SGM_SD2 = ("sd2", {"h": "conditioner.embedders.0.model."})

_TOKEN_EMBEDDING_KEYS = ("text_model.embeddings.token_embedding.weight", "embeddings.token_embedding.weight",
                         "token_embedding.weight")


def _has_encoder(state_dict: dict[str, torch.Tensor], prefix: str) -> bool:
    return any(prefix + key in state_dict for key in _TOKEN_EMBEDDING_KEYS)


def _width_under(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    for key in _TOKEN_EMBEDDING_KEYS:
        if prefix + key in state_dict:
            return state_dict[prefix + key].shape[1]
    raise KeyError(prefix)


def to_transformers_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One encoder's weights (keys without prefix) in the module's layout, ready for a strict load.

    Converts the OpenCLIP layout and old SD1 files without ``text_model.``, drops ``position_ids``,
    and fills what some files leave out: an identity ``text_projection`` and the default ``logit_scale``.
    """
    if is_open_clip_layout(state_dict):
        state_dict = convert_open_clip(state_dict)
    converted: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(("embeddings.", "encoder.", "final_layer_norm.")):
            key = "text_model." + key
        if key == "text_projection":  # files written by old CLIPSave nodes
            key, value = "text_projection.weight", value.transpose(0, 1).contiguous()
        converted[key] = value
    converted.pop("text_model.embeddings.position_ids", None)
    reference = converted.get("text_model.final_layer_norm.weight")
    if reference is not None and "text_projection.weight" not in converted:
        width = reference.shape[0]
        converted["text_projection.weight"] = torch.eye(width, dtype=reference.dtype, device=reference.device)
    if reference is not None and "logit_scale" not in converted:
        converted["logit_scale"] = torch.tensor(4.6055, dtype=reference.dtype, device=reference.device)
    return converted


def build_encoder(spec: EncoderSpec, weights: dict[str, torch.Tensor], dtype: Optional[torch.dtype],
                   device: Optional[torch.device]) -> ClipTextEncoder:
    """An encoder holding ``weights`` (module layout), stored in ``dtype`` on ``device``."""
    config = config_from_state_dict(weights, KINDS[spec.key].activation)
    encoder = ClipTextEncoder(config, spec, device="meta")
    module_keys = {"transformer." + key if key != "logit_scale" else key: value for key, value in weights.items()}
    missing, unexpected = encoder.load_state_dict(module_keys, strict=False, assign=True)
    if missing:
        raise TextEncoderLoadError(f"the CLIP-{spec.key.upper()} text encoder is missing weights: {sorted(missing)}")
    if unexpected:
        logger.debug("text encoder clip_%s: ignored keys %s", spec.key, sorted(unexpected))
    return encoder.to(device=device, dtype=dtype)


def detect_checkpoint_family(state_dict: dict[str, torch.Tensor]) -> Optional[str]:
    """The family whose text-encoder prefixes a single-file checkpoint has, or None."""
    for family, prefixes in CHECKPOINT_LAYOUTS:
        if all(_has_encoder(state_dict, prefix) for prefix in prefixes.values()):
            if family == "sdxl_refiner" and _width_under(state_dict, prefixes["g"]) == 1024:
                return _SGM_SD2[0]
            return family
    return None


def _checkpoint_prefixes(family: str, state_dict: dict[str, torch.Tensor]) -> dict[str, str]:
    for name, prefixes in (*CHECKPOINT_LAYOUTS, _SGM_SD2):
        if name == family and all(_has_encoder(state_dict, prefix) for prefix in prefixes.values()):
            return prefixes
    raise TextEncoderLoadError(f"the checkpoint has no {family} text encoders under the expected prefixes")


def _text_encoder_placement() -> tuple[torch.device, torch.device, torch.dtype]:
    from .. import model_management

    load_device = model_management.text_encoder_device()
    offload_device = model_management.text_encoder_offload_device()
    return load_device, offload_device, model_management.text_encoder_dtype(load_device)


def build_clip(family: str, weights: dict[str, dict[str, torch.Tensor]],
               embedding_directory: EmbeddingDirectories = None, load_device: Optional[torch.device] = None,
               offload_device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None):
    """A CLIP for ``family`` from each encoder's weights (``{"l": {...}, "g": {...}}``, any layout)."""
    from .clip import CLIP

    default_load, default_offload, default_dtype = _text_encoder_placement()
    load_device = load_device or default_load
    offload_device = offload_device or default_offload
    dtype = dtype or default_dtype
    spec = FAMILIES[family]
    encoders = [build_encoder(encoder_spec, to_transformers_layout(weights[encoder_spec.key]), dtype, offload_device)
                for encoder_spec in spec.encoders]
    stack = ClipStack(encoders, spec.pooled_from)
    widths = {encoder.spec.key: encoder.transformer.config.width for encoder in encoders}
    tokenizer_specs = [
        TokenizerSpec(key=key, embedding_key=f"clip_{key}", embedding_size=widths.get(key, 768),
                      pad_with_end=KINDS[key].pad_token == END_TOKEN_ID)
        for key in spec.tokenizer_keys]
    if embedding_directory is None:
        from comfy import paths
        embedding_directory = paths.get_folder_paths("embeddings")
    tokenizer = PromptTokenizer(tokenizer_specs, embedding_directory)
    return CLIP(stack, tokenizer, family=family, load_device=load_device, offload_device=offload_device)


def load_from_checkpoint(state_dict: dict[str, torch.Tensor], family: Optional[str] = None,
                         embedding_directory: EmbeddingDirectories = None):
    """The CLIP of a single-file SD1/SD2/SDXL checkpoint, or None when it has no text encoder.

    ``family`` ("sd1", "sd2", "sdxl", "sdxl_refiner") is the caller's detection when it has one;
    otherwise the prefixes decide. ``embedding_directory`` defaults to the configured embeddings folders.
    """
    family = family or detect_checkpoint_family(state_dict)
    if family is None:
        return None
    prefixes = _checkpoint_prefixes(family, state_dict)
    weights = {key: {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
               for key, prefix in prefixes.items()}
    return build_clip(family, weights, embedding_directory)


# --- separate text-encoder files (CLIPLoader, DualCLIPLoader) -------------------------------------

def classify_text_encoder(state_dict: dict[str, torch.Tensor]) -> str:
    """``"l"``, ``"h"`` or ``"g"`` for one text-encoder file (keys without prefix, any layout).

    Released encoders are told apart by depth as ComfyUI does (32 layers: bigG, 24: ViT-H, else
    CLIP-L); shallower OpenCLIP-layout files are bigG unless 1024 wide.
    """
    converted = to_transformers_layout(state_dict)
    if "text_model.embeddings.token_embedding.weight" not in converted:
        found = ", ".join(sorted(state_dict)[:8])
        raise TextEncoderLoadError(f"not a CLIP text encoder file (no token embedding); its first keys: {found}")
    if "text_model.encoder.layers.30.mlp.fc1.weight" in converted:
        return "g"
    if "text_model.encoder.layers.22.mlp.fc1.weight" in converted:
        return "h"
    if is_open_clip_layout(state_dict):
        return "h" if converted["text_model.embeddings.token_embedding.weight"].shape[1] == 1024 else "g"
    return "l"


# CLIPLoader / DualCLIPLoader types this plugin builds, with the encoders each needs.
SINGLE_FILE_FAMILIES = {"l": "sd1", "h": "sd2", "g": "sdxl_refiner"}
SUPPORTED_CLIP_TYPES = {"stable_diffusion": 1, "sdxl": 2}


def _strip_common_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Files exported from a whole model keep a wrapper prefix; find the text model under it."""
    for marker in ("text_model.embeddings.token_embedding.weight", "transformer.resblocks.0.ln_1.weight"):
        for key in state_dict:
            if key.endswith(marker) and key != marker:
                prefix = key[:-len(marker)]
                return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return state_dict


def load_text_encoder_state_dicts(state_dicts: Sequence[dict[str, torch.Tensor]], clip_type: str = "stable_diffusion",
                                  embedding_directory: EmbeddingDirectories = None,
                                  load_device: Optional[torch.device] = None,
                                  offload_device: Optional[torch.device] = None):
    """A CLIP from text-encoder state dicts: one for ``stable_diffusion``, CLIP-L + bigG for ``sdxl``."""
    expected = SUPPORTED_CLIP_TYPES.get(clip_type)
    if expected is None:
        raise TextEncoderLoadError(
            f"text encoder type {clip_type!r} is not supported here; supported: {', '.join(SUPPORTED_CLIP_TYPES)}")
    if len(state_dicts) != expected:
        raise TextEncoderLoadError(f"type {clip_type!r} takes {expected} text encoder file(s), got {len(state_dicts)}")
    state_dicts = [_strip_common_prefix(sd) for sd in state_dicts]
    kinds = [classify_text_encoder(sd) for sd in state_dicts]
    if expected == 1:
        family = SINGLE_FILE_FAMILIES[kinds[0]]
        weights = {FAMILIES[family].encoders[0].key: state_dicts[0]}
    else:
        if sorted(kinds) != ["g", "l"]:
            kinds = _pair_by_width(state_dicts, kinds)
        family = "sdxl"
        weights = dict(zip(kinds, state_dicts))
    return build_clip(family, weights, embedding_directory, load_device=load_device, offload_device=offload_device)


def _pair_by_width(state_dicts: Sequence[dict[str, torch.Tensor]], kinds: list[str]) -> list[str]:
    """SDXL's two encoders when depth did not tell them apart: the wider one is bigG."""
    widths = [to_transformers_layout(sd)["text_model.embeddings.token_embedding.weight"].shape[1]
              for sd in state_dicts]
    if "h" in kinds or widths[0] == widths[1]:
        raise TextEncoderLoadError(f"sdxl needs a CLIP-L and a CLIP-G text encoder; got {kinds[0]!r} "
                                   f"({widths[0]} wide) and {kinds[1]!r} ({widths[1]} wide)")
    return ["g", "l"] if widths[0] > widths[1] else ["l", "g"]


def load_text_encoder_files(paths: Sequence[str], clip_type: str = "stable_diffusion",
                            embedding_directory: EmbeddingDirectories = None,
                            load_device: Optional[torch.device] = None,
                            offload_device: Optional[torch.device] = None):
    """CLIPLoader / DualCLIPLoader: a CLIP from one or two text-encoder files."""
    from ..loading import load_torch_file

    return load_text_encoder_state_dicts([load_torch_file(path) for path in paths], clip_type, embedding_directory,
                                         load_device=load_device, offload_device=offload_device)


# --- LoRA keys and checkpoint saving --------------------------------------------------------------

_LORA_MODULES = {
    "mlp.fc1": "mlp_fc1",
    "mlp.fc2": "mlp_fc2",
    "self_attn.k_proj": "self_attn_k_proj",
    "self_attn.q_proj": "self_attn_q_proj",
    "self_attn.v_proj": "self_attn_v_proj",
    "self_attn.out_proj": "self_attn_out_proj",
}


def _lora_names(key: str, has_l: bool) -> tuple[str, ...]:
    """The LoRA formats' names of an encoder's layer weights: (kohya name pattern, diffusers prefix)."""
    if key in ("l", "h"):
        return "lora_te_{}", "lora_te1_{}", "text_encoder.{}"
    if has_l:
        return "lora_te2_{}", "text_encoder_2.{}"
    return "lora_te_{}", "text_encoder.{}", "lora_prior_te_{}"


def text_encoder_key_map(clip) -> dict[str, str]:
    """LoRA key -> weight key in ``clip.cond_stage_model`` (the keys its patcher patches).

    ``clip`` is a CLIP or its ClipStack. Covers kohya (``lora_te_``, ``lora_te1_``/``lora_te2_`` for
    SDXL), diffusers (``text_encoder.``/``text_encoder_2.``) and the generic ``text_encoders.<module>`` names.
    """
    stack: ClipStack = clip if isinstance(clip, ClipStack) else clip.cond_stage_model
    keys = list(stack.state_dict().keys())
    key_map = {f"text_encoders.{k[:-len('.weight')]}": k for k in keys if k.endswith(".weight")}
    encoders = stack.encoders()
    has_l = "l" in encoders
    for key, encoder in encoders.items():
        for layer in range(encoder.num_layers):
            for module, kohya in _LORA_MODULES.items():
                weight = f"clip_{key}.transformer.text_model.encoder.layers.{layer}.{module}.weight"
                for pattern in _lora_names(key, has_l):
                    if pattern.startswith("text_encoder"):
                        key_map[pattern.format(f"text_model.encoder.layers.{layer}.{module}")] = weight
                    else:
                        key_map[pattern.format(f"text_model_encoder_layers_{layer}_{kohya}")] = weight
    if "g" in encoders:
        key_map["lora_prior_te_text_projection"] = "clip_g.transformer.text_projection.weight"
        key_map["lora_te2_text_projection"] = "clip_g.transformer.text_projection.weight"
    if has_l:
        key_map["lora_te1_text_projection"] = "clip_l.transformer.text_projection.weight"
    return key_map


def checkpoint_state_dict(clip) -> dict[str, torch.Tensor]:
    """The text encoders in their single-file checkpoint layout and prefixes (for CheckpointSave)."""
    family = clip.family
    prefixes = dict(_checkpoint_prefixes_for_saving(family))
    out: dict[str, torch.Tensor] = {}
    state = clip.get_sd()
    for key, prefix in prefixes.items():
        own = {k[len(f"clip_{key}.transformer."):]: v for k, v in state.items()
               if k.startswith(f"clip_{key}.transformer.")}
        if key == "l":
            own.pop("text_projection.weight", None)
            own["text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
        else:
            own["logit_scale"] = state[f"clip_{key}.logit_scale"]
            own = convert_to_open_clip(own)
        out.update({prefix + k: v for k, v in own.items()})
    return out


def _checkpoint_prefixes_for_saving(family: str) -> dict[str, str]:
    return next(prefixes for name, prefixes in CHECKPOINT_LAYOUTS if name == family)
