"""Loading whole models from files (ComfyUI's ``comfy.sd``): checkpoints, UNet-only and VAE files, LoRAs.

``load_checkpoint_guess_config`` reads a single-file SD1.x/SD2.x/SDXL checkpoint, detects its family
from the UNet's keys and shapes and returns ``(MODEL, CLIP or None, VAE or None, None)`` as ComfyUI does.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Optional, Sequence, Union

import torch

from comfyui_core_nodes import detection, diffusers_layout, model_management
from comfyui_core_nodes.loading import (ModelFileError, count_parameters, load_into, load_torch_file,
                                        state_dict_dtype, take_prefix, without_ldm_extras)
from comfyui_core_nodes.lora import load_lora_for_models
from comfyui_core_nodes.model_base import BaseModel, ModelConfig, create_model
from comfyui_core_nodes.model_patcher import ModelPatcher, _load_state
from comfyui_core_nodes.vae import VAE

logger = logging.getLogger(__name__)

EmbeddingDirectory = Union[str, Sequence[str], None]


class CheckpointError(ModelFileError):
    """A file that is not a model this loader understands, or lacks a part the node needs."""


def load_model_weights(sd: Mapping[str, torch.Tensor], prefix: str, model_config: ModelConfig,
                       model_options: Optional[dict] = None, name: str = "") -> ModelPatcher:
    """A ``ModelPatcher`` around the diffusion model described by ``model_config``, weights from ``sd``."""
    model_options = model_options or {}
    parameters = count_parameters(sd, prefix)
    load_device = model_management.get_torch_device()
    dtype = model_options.get("dtype") or model_management.unet_dtype(
        model_params=parameters, supported_dtypes=model_config.supported_inference_dtypes,
        weight_dtype=state_dict_dtype(sd, prefix))
    manual_cast = model_management.unet_manual_cast(dtype, load_device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(dtype, manual_cast)
    model = create_model(model_config, device=torch.device("meta"))
    load_into(model.diffusion_model, take_prefix(sd, prefix), dtype, what=f"{name or 'model'} UNet")
    initial = model_management.unet_initial_load_device(parameters, dtype)
    if initial != torch.device("cpu"):
        model.to(initial)
    patcher = ModelPatcher(model, load_device=load_device, offload_device=model_management.unet_offload_device())
    _load_state(model).device = initial
    patcher.ckpt_name = os.path.basename(name) if name else None
    logger.info("%s: %s, %s weights computing in %s", name or "model", model_config.family, dtype,
                manual_cast or dtype)
    return patcher


def _clip_from_checkpoint(sd: Mapping[str, torch.Tensor], family: str,
                          embedding_directory: EmbeddingDirectory) -> Any:
    from comfyui_core_nodes import text_encoders

    if text_encoders.detect_checkpoint_family(dict(sd)) is None:
        return None
    return text_encoders.load_from_checkpoint(dict(sd), family=family, embedding_directory=embedding_directory)


def _looks_like(sd: Mapping[str, torch.Tensor]) -> str:
    kind = detection.guess_other_kind(sd)
    return f"; it looks like {kind}" if kind else ""


def _detect(sd: Mapping[str, torch.Tensor], prefix: str, name: str) -> ModelConfig:
    try:
        return detection.model_config_for(sd, prefix)
    except detection.UnknownModelError as error:
        raise CheckpointError(f"{name or 'this file'}: {error}") from error


def load_state_dict_guess_config(sd: Mapping[str, torch.Tensor], output_vae: bool = True, output_clip: bool = True,
                                 output_clipvision: bool = False, embedding_directory: EmbeddingDirectory = None,
                                 output_model: bool = True, model_options: Optional[dict] = None,
                                 te_model_options: Optional[dict] = None, ckpt_name: str = "",
                                 metadata: Optional[dict] = None) -> tuple[Any, Any, Any, Any]:
    sd = without_ldm_extras(sd)
    prefix = detection.find_unet_prefix(sd)
    if prefix is None:
        raise CheckpointError(f"{ckpt_name or 'this file'} is not a Stable Diffusion checkpoint: no UNet "
                              f"(model.diffusion_model.input_blocks.*) found{_looks_like(sd)}; "
                              f"{detection.summarize_keys(sd)}")
    model_config = _detect(sd, prefix, ckpt_name)
    patcher = load_model_weights(sd, prefix, model_config, model_options, ckpt_name) if output_model else None
    vae = None
    if output_vae:
        vae_sd = take_prefix(sd, detection.VAE_PREFIX)
        if vae_sd:
            vae = VAE(sd=vae_sd, ckpt_name=ckpt_name)
        else:
            logger.warning("%s holds no VAE (first_stage_model.*)", ckpt_name or "the checkpoint")
    family = detection.FAMILIES_BY_NAME[model_config.family]
    clip = None
    if output_clip:
        clip = _clip_from_checkpoint(sd, family.text_encoders or family.name, embedding_directory)
        if clip is None:
            logger.warning("%s holds no text encoder", ckpt_name or "the checkpoint")
    clip_vision = None
    if output_clipvision and family.clip_vision_prefix is not None:
        from comfyui_core_nodes.text_encoders.vision import load_clip_vision_state_dict

        clip_vision = load_clip_vision_state_dict(dict(sd), prefix=family.clip_vision_prefix)
    return patcher, clip, vae, clip_vision


def load_checkpoint_guess_config(ckpt_path: str, output_vae: bool = True, output_clip: bool = True,
                                 output_clipvision: bool = False, embedding_directory: EmbeddingDirectory = None,
                                 output_model: bool = True, model_options: Optional[dict] = None,
                                 te_model_options: Optional[dict] = None) -> tuple[Any, Any, Any, Any]:
    """``(MODEL, CLIP, VAE, CLIP_VISION)`` from a single-file checkpoint; parts it lacks (or not asked for) are
    None. Only unCLIP checkpoints carry a CLIP vision tower."""
    sd, metadata = load_torch_file(ckpt_path, return_metadata=True)
    return load_state_dict_guess_config(sd, output_vae, output_clip, output_clipvision, embedding_directory,
                                        output_model, model_options, te_model_options,
                                        ckpt_name=os.path.basename(ckpt_path), metadata=metadata)


def load_diffusion_model_state_dict(sd: Mapping[str, torch.Tensor], model_options: Optional[dict] = None,
                                    name: str = "") -> ModelPatcher:
    """A UNet-only state dict (keys bare or under ``model.diffusion_model.``) as a MODEL."""
    sd = without_ldm_extras(sd)
    prefix = detection.find_unet_prefix(sd)
    if prefix is None and diffusers_layout.is_diffusers_unet(sd) and not diffusers_layout.is_diffusers_controlnet(sd):
        sd, prefix = diffusers_layout.unet_to_ldm(sd, what=name or "UNet"), ""
    if prefix is None:
        raise CheckpointError(f"{name or 'this file'} is not a diffusion model: no UNet (input_blocks.*) "
                              f"found{_looks_like(sd)}; {detection.summarize_keys(sd)}")
    return load_model_weights(sd, prefix, _detect(sd, prefix, name), model_options, name)


def load_diffusion_model(unet_path: str, model_options: Optional[dict] = None) -> ModelPatcher:
    return load_diffusion_model_state_dict(load_torch_file(unet_path), model_options,
                                           name=os.path.basename(unet_path))


load_unet = load_diffusion_model
load_unet_state_dict = load_diffusion_model_state_dict


def load_vae(vae_path: str) -> VAE:
    """A VAE file: bare ``encoder.``/``decoder.`` keys or a checkpoint's ``first_stage_model.`` part."""
    sd = load_torch_file(vae_path)
    name = os.path.basename(vae_path)
    if "decoder.conv_in.weight" not in sd:
        sd = take_prefix(sd, detection.VAE_PREFIX)
    if "decoder.conv_in.weight" not in sd or "encoder.conv_in.weight" not in sd:
        whole = load_torch_file(vae_path)
        kind = ("a checkpoint without a VAE" if detection.find_unet_prefix(whole) is not None
                else detection.guess_other_kind(whole))
        seems = f"; it looks like {kind}" if kind else ""
        raise CheckpointError(f"{name} is not a KL VAE: no encoder.conv_in / decoder.conv_in weights{seems}; "
                              f"{detection.summarize_keys(whole)}")
    return VAE(sd=sd, ckpt_name=name)


def load_clip(ckpt_paths: Sequence[str], embedding_directory: EmbeddingDirectory = None,
              clip_type: Any = "stable_diffusion", model_options: Optional[dict] = None) -> Any:
    """Text encoder files as a CLIP (the text encoders' loader)."""
    from comfyui_core_nodes import text_encoders

    kind = getattr(clip_type, "name", clip_type)
    return text_encoders.load_text_encoder_files(list(ckpt_paths), str(kind).lower(), embedding_directory)


def checkpoint_state_dict(model: ModelPatcher, clip: Any = None, vae: Optional[VAE] = None) -> dict[str, torch.Tensor]:
    """The single-file layout of a (patched) model, its text encoders and VAE, for CheckpointSave."""
    model_management.load_models_gpu([model] + ([clip.patcher] if clip is not None else []),
                                     force_full_load=True)
    clip_sd = None
    if clip is not None:
        from comfyui_core_nodes import text_encoders

        clip_sd = text_encoders.checkpoint_state_dict(clip)
    base: BaseModel = model.model
    return base.state_dict_for_saving(clip_sd, vae.get_sd() if vae is not None else None)


def save_checkpoint(output_path: str, model: ModelPatcher, clip: Any = None, vae: Optional[VAE] = None,
                    metadata: Optional[dict[str, str]] = None) -> None:
    from comfyui_core_nodes.utils import save_torch_file

    sd = {key: value.detach().to("cpu") for key, value in checkpoint_state_dict(model, clip, vae).items()}
    save_torch_file(sd, output_path, metadata=metadata)


def __getattr__(name: str) -> Any:
    # The text encoders import this plugin's loading code; reaching CLIP lazily avoids the cycle.
    if name == "CLIP":
        from comfyui_core_nodes.text_encoders import CLIP

        return CLIP
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CheckpointError", "VAE", "checkpoint_state_dict", "load_checkpoint_guess_config", "load_clip",
           "load_diffusion_model", "load_diffusion_model_state_dict", "load_lora_for_models", "load_model_weights",
           "load_state_dict_guess_config", "load_unet", "load_unet_state_dict", "load_vae", "save_checkpoint"]
