"""Reading model files: .safetensors memory-mapped (unless ``--disable-mmap``), .ckpt/.pt with ``weights_only``.

Also puts a state dict into a model built on the meta device without copying tensors that already
have the right dtype, so a memory-mapped checkpoint's weights are used in place.
"""
from __future__ import annotations

import logging
import os
import pickle
from typing import Any, Mapping, Optional, Union

import torch

from comfyui_core_nodes.options import option

logger = logging.getLogger(__name__)

# Training-time buffers original LDM .ckpt releases (and some merges) carry beside the weights: the
# DDPM schedule, EMA bookkeeping. Nothing reads them; the schedule is recomputed from the family.
LDM_EXTRA_KEYS = frozenset({
    "alphas_cumprod", "alphas_cumprod_prev", "betas", "log_one_minus_alphas_cumprod", "logvar",
    "model_ema.decay", "model_ema.num_updates", "posterior_log_variance_clipped", "posterior_mean_coef1",
    "posterior_mean_coef2", "posterior_variance", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
})

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")


class ModelFileError(ValueError):
    """A model file that cannot be read, or that is not what the loader needs."""


def load_torch_file(ckpt: Union[str, os.PathLike], safe_load: bool = True, device: Any = None,
                    return_metadata: bool = False) -> Any:
    """A file's state dict (and its safetensors metadata with ``return_metadata``).

    Pickled files are read with ``torch.load(weights_only=True)`` whatever ``safe_load`` says: a model
    file must not run code. A training checkpoint's ``state_dict`` entry is unwrapped.
    """
    if ckpt is None:
        raise FileNotFoundError("The model file was not found")
    path = os.fspath(ckpt)
    device = torch.device(device) if device is not None else torch.device("cpu")
    metadata: Optional[dict[str, str]] = None
    if path.lower().endswith(SAFETENSORS_SUFFIXES):
        sd, metadata = _load_safetensors(path, device)
    else:
        sd = _load_pickle(path, device)
    return (sd, metadata) if return_metadata else sd


def _load_safetensors(path: str, device: torch.device) -> tuple[dict[str, torch.Tensor], Optional[dict[str, str]]]:
    import safetensors

    copy = bool(option("disable_mmap"))
    try:
        with safetensors.safe_open(path, framework="pt", device=device.type) as handle:
            # get_tensor maps the file; a copy detaches the tensor from it (for network drives, say).
            sd = {key: handle.get_tensor(key).to(device=device, copy=True) if copy else handle.get_tensor(key)
                  for key in handle.keys()}
            return sd, handle.metadata()
    except safetensors.SafetensorError as error:
        message = str(error)
        if "HeaderTooLarge" in message:
            raise ModelFileError(f"{path} is not a .safetensors file (its header is invalid); is it a .ckpt "
                                 f"renamed?") from error
        if "MetadataIncompleteBuffer" in message or "InvalidHeaderDeserialization" in message:
            raise ModelFileError(f"{path} is truncated or corrupt ({message}); check its size and copy it "
                                 f"again") from error
        raise ModelFileError(f"{path} could not be read: {message}") from error


def _load_pickle(path: str, device: torch.device) -> dict[str, torch.Tensor]:
    try:
        loaded = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        # A .safetensors file with the wrong extension is common.
        try:
            return _load_safetensors(path, device)[0]
        except ModelFileError:
            pass
        raise ModelFileError(f"{path} could not be loaded as a torch file with weights_only=True (files that "
                             f"need arbitrary code are refused) nor as safetensors: {error}") from error
    if not isinstance(loaded, dict):
        raise ModelFileError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    if "state_dict" in loaded and isinstance(loaded["state_dict"], dict):
        return loaded["state_dict"]
    if len(loaded) == 1:
        only = next(iter(loaded.values()))
        if isinstance(only, dict):
            return only
    return loaded


def without_ldm_extras(sd: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in sd.items() if key not in LDM_EXTRA_KEYS}


def take_prefix(sd: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The entries under ``prefix``, with it removed."""
    return {key[len(prefix):]: value for key, value in sd.items() if key.startswith(prefix)}


def state_dict_prefix_replace(sd: dict[str, Any], replace_prefix: Mapping[str, str],
                              filter_keys: bool = False) -> dict[str, Any]:
    """ComfyUI's helper: rename key prefixes; with ``filter_keys`` keep only renamed keys."""
    out: dict[str, Any] = {} if filter_keys else sd
    for old, new in replace_prefix.items():
        for key in [key for key in sd if key.startswith(old)]:
            out[new + key[len(old):]] = sd.pop(key)
    return out


def load_into(module: torch.nn.Module, sd: Mapping[str, torch.Tensor], dtype: Optional[torch.dtype],
              what: str = "model") -> torch.nn.Module:
    """Assign ``sd``'s tensors to ``module`` (built on the meta device), converting floats to ``dtype``.

    Shapes must match. A key the module has and the file lacks is zero-filled with a warning (ComfyUI
    carries on likewise); keys the module does not know are ignored.
    """
    own = module.state_dict()
    converted: dict[str, torch.Tensor] = {}
    for key, target in own.items():
        tensor = sd.get(key)
        if tensor is None:
            continue
        if tuple(tensor.shape) != tuple(target.shape):
            raise ModelFileError(f"{what}: {key} has shape {tuple(tensor.shape)} in the file but the detected "
                                 f"architecture needs {tuple(target.shape)}")
        want = dtype if dtype is not None and tensor.is_floating_point() and target.is_floating_point() \
            else target.dtype
        converted[key] = tensor if tensor.dtype == want else tensor.to(want)
    missing = [key for key in own if key not in converted]
    unexpected = [key for key in sd if key not in own]
    module.load_state_dict(converted, strict=False, assign=True)
    # Inference only: no autograd bookkeeping on the weights.
    module.requires_grad_(False)
    if missing:
        logger.warning("%s missing %d keys (zero-filled): %s", what, len(missing), missing[:10])
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if tensor.is_meta:
                _set_tensor(module, name, torch.zeros(tensor.shape, dtype=dtype or tensor.dtype))
    if unexpected:
        logger.debug("%s: ignored %d unexpected keys: %s", what, len(unexpected), unexpected[:10])
    return module


def _set_tensor(module: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    owner_name, _, attribute = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    if attribute in owner._parameters:
        owner._parameters[attribute] = torch.nn.Parameter(value, requires_grad=False)
    else:
        owner._buffers[attribute] = value


def state_dict_dtype(sd: Mapping[str, torch.Tensor], prefix: str = "") -> Optional[torch.dtype]:
    """The most common floating dtype among the tensors under ``prefix``."""
    counts: dict[torch.dtype, int] = {}
    for key, tensor in sd.items():
        if key.startswith(prefix) and tensor.is_floating_point():
            counts[tensor.dtype] = counts.get(tensor.dtype, 0) + tensor.numel()
    return max(counts, key=lambda dtype: counts[dtype]) if counts else None


def count_parameters(sd: Mapping[str, torch.Tensor], prefix: str = "") -> int:
    return sum(tensor.numel() for key, tensor in sd.items() if key.startswith(prefix))


__all__ = ["LDM_EXTRA_KEYS", "ModelFileError", "count_parameters", "load_into", "load_torch_file",
           "state_dict_dtype", "state_dict_prefix_replace", "take_prefix", "without_ldm_extras"]
