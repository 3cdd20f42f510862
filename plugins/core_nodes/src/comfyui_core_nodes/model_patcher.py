"""``ModelPatcher``: a model plus what to change about it (weight patches, object patches, model options).

Clones share the underlying model and copy the patches, so a LoRA or a sampler tweak makes a new
patcher while the base model stays as loaded. Weight patches are applied when the patcher is loaded
onto its device (``load``/``patch_model``) and the original tensors restored by ``unpatch_model``,
which model management calls before another clone of the same model is loaded. Layers that do not
fit in VRAM stay in CPU memory and are cast, patches included, per call.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from comfyui_core_nodes import model_management
from comfyui_core_nodes.ops import CastWeightBias

logger = logging.getLogger(__name__)

# A patch as stored per weight key: (strength_patch, value, strength_model, offset, function).
PatchTuple = tuple[float, Any, float, Optional[tuple[int, int, int]], Optional[Callable]]


def copy_nested_dicts(value: dict) -> dict:
    """Copy dicts at every level and lists one level deep (ComfyUI's model_options clone)."""
    out = value.copy()
    for key, item in value.items():
        if isinstance(item, dict):
            out[key] = copy_nested_dicts(item)
        elif isinstance(item, list):
            out[key] = item.copy()
    return out


def get_attr(obj: Any, attr: str) -> Any:
    for name in attr.split("."):
        obj = getattr(obj, name)
    return obj


def set_attr(obj: Any, attr: str, value: Any) -> Any:
    """Set a dotted attribute; returns the previous value."""
    names = attr.split(".")
    for name in names[:-1]:
        obj = getattr(obj, name)
    previous = getattr(obj, names[-1], None)
    setattr(obj, names[-1], value)
    return previous


def set_attr_param(obj: Any, attr: str, value: torch.Tensor) -> Any:
    return set_attr(obj, attr, torch.nn.Parameter(value, requires_grad=False)
                    if not isinstance(value, torch.nn.Parameter) else value)


def set_model_options_patch_replace(model_options: dict, patch: Any, name: str, block_name: str, number: int,
                                    transformer_index: Optional[int] = None) -> dict:
    options = model_options["transformer_options"].copy()
    replace = dict(options.get("patches_replace", {}))
    replace[name] = dict(replace.get(name, {}))
    block = (block_name, number, transformer_index) if transformer_index is not None else (block_name, number)
    replace[name][block] = patch
    options["patches_replace"] = replace
    model_options["transformer_options"] = options
    return model_options


def set_model_options_post_cfg_function(model_options: dict, post_cfg_function: Callable,
                                        disable_cfg1_optimization: bool = False) -> dict:
    model_options["sampler_post_cfg_function"] = model_options.get("sampler_post_cfg_function", []) + [
        post_cfg_function]
    if disable_cfg1_optimization:
        model_options["disable_cfg1_optimization"] = True
    return model_options


def set_model_options_pre_cfg_function(model_options: dict, pre_cfg_function: Callable,
                                       disable_cfg1_optimization: bool = False) -> dict:
    model_options["sampler_pre_cfg_function"] = model_options.get("sampler_pre_cfg_function", []) + [
        pre_cfg_function]
    if disable_cfg1_optimization:
        model_options["disable_cfg1_optimization"] = True
    return model_options


@dataclass
class LoadState:
    """What is currently done to a model object, shared by all patchers (clones) of that model."""
    device: Optional[torch.device] = None
    applied_patches: Optional[uuid.UUID] = None
    # weight key -> original tensor, for weights replaced by patched copies.
    backup: dict[str, torch.Tensor] = field(default_factory=dict)
    # attribute name -> original value, for object patches in place.
    object_backup: dict[str, Any] = field(default_factory=dict)
    # Modules left on the offload device and cast per call.
    streamed: dict[str, torch.nn.Module] = field(default_factory=dict)
    loaded_bytes: int = 0


def _load_state(model: torch.nn.Module) -> LoadState:
    state = model.__dict__.get("_comfy_load_state")
    if state is None:
        state = LoadState()
        model.__dict__["_comfy_load_state"] = state
    return state


class LowVramPatch:
    """Computes a patched weight from the streamed original, per call, on the compute device."""

    def __init__(self, key: str, patches: dict[str, list[PatchTuple]]):
        self.key = key
        self.patches = patches

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        from comfyui_core_nodes.lora import calculate_weight

        return calculate_weight(self.patches[self.key], weight.float(), self.key).to(weight.dtype)


def _module_bytes(module: torch.nn.Module) -> int:
    return sum(tensor.nbytes for tensor in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)))


class ModelPatcher:
    def __init__(self, model: torch.nn.Module, load_device: torch.device, offload_device: torch.device,
                 size: int = 0, weight_inplace_update: bool = False):
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device
        self.size = size
        self.patches: dict[str, list[PatchTuple]] = {}
        self.object_patches: dict[str, Any] = {}
        self.model_options: dict[str, Any] = {"transformer_options": {}}
        self.patches_uuid = uuid.uuid4()
        self.parent: Optional[ModelPatcher] = None
        self.weight_inplace_update = weight_inplace_update
        self.ckpt_name: Optional[str] = None

    def __repr__(self) -> str:
        name = f" {self.ckpt_name}" if self.ckpt_name else ""
        return f"<ModelPatcher{name} {type(self.model).__name__} {len(self.patches)} patched keys>"

    # -- identity and size ----------------------------------------------------------------------------
    def model_size(self) -> int:
        if self.size <= 0:
            self.size = model_management.module_size(self.model)
        return self.size

    def loaded_size(self) -> int:
        return _load_state(self.model).loaded_bytes

    def current_loaded_device(self) -> Optional[torch.device]:
        return _load_state(self.model).device

    def get_ram_usage(self) -> int:
        return self.model_size()

    def clone(self) -> "ModelPatcher":
        other = ModelPatcher(self.model, self.load_device, self.offload_device, self.size,
                             self.weight_inplace_update)
        other.patches = {key: list(value) for key, value in self.patches.items()}
        other.patches_uuid = self.patches_uuid
        other.object_patches = dict(self.object_patches)
        other.model_options = copy_nested_dicts(self.model_options)
        other.parent = self
        other.ckpt_name = self.ckpt_name
        return other

    def is_clone(self, other: Any) -> bool:
        return getattr(other, "model", None) is self.model

    def clone_has_same_weights(self, clone: "ModelPatcher") -> bool:
        return self.is_clone(clone) and self.patches_uuid == clone.patches_uuid

    def memory_required(self, input_shape: Any) -> float:
        return self.model.memory_required(input_shape=input_shape)

    def model_dtype(self) -> Optional[torch.dtype]:
        if hasattr(self.model, "diffusion_model"):
            return self.get_model_object("diffusion_model").dtype
        if hasattr(self.model, "get_dtype"):
            return self.model.get_dtype()
        return next((tensor.dtype for tensor in self.model.parameters()), None)

    # -- model options --------------------------------------------------------------------------------
    def set_model_sampler_cfg_function(self, sampler_cfg_function: Callable,
                                       disable_cfg1_optimization: bool = False) -> None:
        import inspect

        if len(inspect.signature(sampler_cfg_function).parameters) == 3:
            # The old (cond, uncond, cond_scale) signature.
            self.model_options["sampler_cfg_function"] = lambda args: sampler_cfg_function(
                args["cond"], args["uncond"], args["cond_scale"])
        else:
            self.model_options["sampler_cfg_function"] = sampler_cfg_function
        if disable_cfg1_optimization:
            self.model_options["disable_cfg1_optimization"] = True

    def set_model_sampler_post_cfg_function(self, post_cfg_function: Callable,
                                            disable_cfg1_optimization: bool = False) -> None:
        self.model_options = set_model_options_post_cfg_function(self.model_options, post_cfg_function,
                                                                 disable_cfg1_optimization)

    def set_model_sampler_pre_cfg_function(self, pre_cfg_function: Callable,
                                           disable_cfg1_optimization: bool = False) -> None:
        self.model_options = set_model_options_pre_cfg_function(self.model_options, pre_cfg_function,
                                                                disable_cfg1_optimization)

    def set_model_sampler_calc_cond_batch_function(self, function: Callable) -> None:
        self.model_options["sampler_calc_cond_batch_function"] = function

    def set_model_unet_function_wrapper(self, unet_wrapper_function: Callable) -> None:
        self.model_options["model_function_wrapper"] = unet_wrapper_function

    def set_model_denoise_mask_function(self, denoise_mask_function: Callable) -> None:
        self.model_options["denoise_mask_function"] = denoise_mask_function

    def set_model_patch(self, patch: Any, name: str) -> None:
        options = self.model_options["transformer_options"]
        patches = options.setdefault("patches", {})
        patches[name] = patches.get(name, []) + [patch]

    def set_model_patch_replace(self, patch: Any, name: str, block_name: str, number: int,
                                transformer_index: Optional[int] = None) -> None:
        self.model_options = set_model_options_patch_replace(self.model_options, patch, name, block_name, number,
                                                             transformer_index)

    def set_model_attn1_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "attn1_patch")

    def set_model_attn2_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "attn2_patch")

    def set_model_attn1_replace(self, patch: Any, block_name: str, number: int,
                                transformer_index: Optional[int] = None) -> None:
        self.set_model_patch_replace(patch, "attn1", block_name, number, transformer_index)

    def set_model_attn2_replace(self, patch: Any, block_name: str, number: int,
                                transformer_index: Optional[int] = None) -> None:
        self.set_model_patch_replace(patch, "attn2", block_name, number, transformer_index)

    def set_model_attn1_output_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "attn1_output_patch")

    def set_model_attn2_output_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "attn2_output_patch")

    def set_model_input_block_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "input_block_patch")

    def set_model_input_block_patch_after_skip(self, patch: Any) -> None:
        self.set_model_patch(patch, "input_block_patch_after_skip")

    def set_model_output_block_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "output_block_patch")

    def set_model_emb_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "emb_patch")

    def add_object_patch(self, name: str, obj: Any) -> None:
        """Replace attribute ``name`` of the model (``model_sampling``, say) while this patcher is loaded."""
        self.object_patches[name] = obj

    def get_model_object(self, name: str) -> Any:
        if name in self.object_patches:
            return self.object_patches[name]
        state = _load_state(self.model)
        if name in state.object_backup:
            return state.object_backup[name]
        return get_attr(self.model, name)

    def model_patches_to(self, device: Any) -> None:
        """Move patch objects that hold tensors or models (``.to``) with the model."""
        options = self.model_options["transformer_options"]
        for patch_list in options.get("patches", {}).values():
            for index, patch in enumerate(patch_list):
                if hasattr(patch, "to"):
                    patch_list[index] = patch.to(device)
        for patch_dict in options.get("patches_replace", {}).values():
            for key, patch in patch_dict.items():
                if hasattr(patch, "to"):
                    patch_dict[key] = patch.to(device)
        wrapper = self.model_options.get("model_function_wrapper")
        if hasattr(wrapper, "to"):
            self.model_options["model_function_wrapper"] = wrapper.to(device)

    def model_patches_models(self) -> list[Any]:
        """Other models patches need loaded alongside (a patch object's ``models()``)."""
        options = self.model_options["transformer_options"]
        found: list[Any] = []
        candidates = [patch for patch_list in options.get("patches", {}).values() for patch in patch_list]
        candidates += [patch for patch_dict in options.get("patches_replace", {}).values()
                       for patch in patch_dict.values()]
        candidates.append(self.model_options.get("model_function_wrapper"))
        for candidate in candidates:
            if hasattr(candidate, "models"):
                found += candidate.models()
        return found

    # -- weight patches -------------------------------------------------------------------------------
    def add_patches(self, patches: dict, strength_patch: float = 1.0, strength_model: float = 1.0) -> list:
        """Add weight patches (key -> patch value); returns the keys this model has."""
        own = self.model.state_dict()
        applied = []
        for patch_key, value in patches.items():
            offset = function = None
            if isinstance(patch_key, str):
                key = patch_key
            else:
                key, offset = patch_key[0], patch_key[1]
                if len(patch_key) > 2:
                    function = patch_key[2]
            if key in own:
                applied.append(patch_key)
                self.patches.setdefault(key, []).append((strength_patch, value, strength_model, offset, function))
        self.patches_uuid = uuid.uuid4()
        return applied

    def get_key_patches(self, filter_prefix: Optional[str] = None) -> dict[str, list]:
        """Each weight as [(original weight, convert function), *patches]: what merging nodes add to another model."""
        state = _load_state(self.model)
        out = {}
        for key, weight in self.model_state_dict(filter_prefix).items():
            weight = state.backup.get(key, weight)
            out[key] = [(weight, lambda tensor, **kwargs: tensor)] + self.patches.get(key, [])
        return out

    def model_state_dict(self, filter_prefix: Optional[str] = None) -> dict[str, torch.Tensor]:
        sd = self.model.state_dict()
        if filter_prefix is None:
            return sd
        return {key: value for key, value in sd.items() if key.startswith(filter_prefix)}

    def calculate_weight(self, patches: list, weight: torch.Tensor, key: str,
                         intermediate_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        from comfyui_core_nodes.lora import calculate_weight

        return calculate_weight(patches, weight, key, intermediate_dtype)

    def patch_weight_to_device(self, key: str, device_to: Optional[torch.device] = None) -> None:
        """Replace weight ``key`` by its patched copy on ``device_to`` (keeping the original to restore)."""
        if key not in self.patches:
            return
        state = _load_state(self.model)
        original = state.backup.get(key)
        if original is None:
            original = get_attr(self.model, key)
            state.backup[key] = original.data if isinstance(original, torch.nn.Parameter) else original
            original = state.backup[key]
        device = device_to if device_to is not None else original.device
        computed = model_management.cast_to_device(original, device, torch.float32, copy=True)
        patched = self.calculate_weight(self.patches[key], computed, key)
        set_attr_param(self.model, key, patched.to(original.dtype))

    # -- loading --------------------------------------------------------------------------------------
    def _apply_object_patches(self, state: LoadState) -> None:
        self._restore_object_patches(state)
        for name, value in self.object_patches.items():
            state.object_backup[name] = set_attr(self.model, name, value)

    def _restore_object_patches(self, state: LoadState) -> None:
        for name, value in state.object_backup.items():
            set_attr(self.model, name, value)
        state.object_backup.clear()

    def _stream(self, name: str, module: torch.nn.Module, state: LoadState) -> None:
        """Leave ``module`` on the offload device, cast (and patched) per call."""
        module.to(self.offload_device)
        module.comfy_cast_weights = True
        for param in ("weight", "bias"):
            key = f"{name}.{param}" if name else param
            if key in self.patches:
                setattr(module, f"{param}_function", [LowVramPatch(key, self.patches)])
        state.streamed[name] = module

    def _unstream(self, state: LoadState) -> None:
        for module in state.streamed.values():
            for attribute in ("comfy_cast_weights", "weight_function", "bias_function"):
                module.__dict__.pop(attribute, None)
        state.streamed.clear()

    def load(self, device_to: Optional[torch.device] = None, lowvram_model_memory: int = 0,
             force_patch_weights: bool = False, full_load: bool = False) -> None:
        """Put the model on ``device_to`` with this patcher's patches; with a ``lowvram_model_memory`` budget
        smaller than the model, only that much of it, the rest streamed per call."""
        device_to = device_to if device_to is not None else self.load_device
        state = _load_state(self.model)
        budget = 0 if full_load or lowvram_model_memory <= 0 else lowvram_model_memory
        partial = 0 < budget < self.model_size()
        if state.applied_patches is not None and (state.applied_patches != self.patches_uuid or state.streamed
                                                  or partial):
            self.unpatch_model(unpatch_weights=True)
        already_patched = state.applied_patches == self.patches_uuid
        loaded = 0
        if partial:
            for name, module in self.model.named_modules():
                size = _module_bytes(module)
                if size == 0:
                    continue
                if loaded + size > budget and isinstance(module, CastWeightBias):
                    self._stream(name, module, state)
                    continue
                for param in ("weight", "bias"):
                    key = f"{name}.{param}" if name else param
                    if not already_patched:
                        self.patch_weight_to_device(key, device_to)
                module.to(device_to)
                loaded += size
        else:
            if not already_patched:
                for key in self.patches:
                    self.patch_weight_to_device(key, device_to)
            self.model.to(device_to)
            loaded = self.model_size()
        state.applied_patches = self.patches_uuid
        state.device = device_to
        state.loaded_bytes = loaded
        self._apply_object_patches(state)
        if partial:
            logger.info("Loaded %s partly: %.1f of %.1f MB on %s, the rest streamed", type(self.model).__name__,
                        loaded / 2 ** 20, self.model_size() / 2 ** 20, device_to)

    def patch_model(self, device_to: Optional[torch.device] = None, lowvram_model_memory: int = 0,
                    load_weights: bool = True, force_patch_weights: bool = False) -> torch.nn.Module:
        self.load(device_to, lowvram_model_memory=lowvram_model_memory, force_patch_weights=force_patch_weights,
                  full_load=lowvram_model_memory == 0)
        return self.model

    def unpatch_model(self, device_to: Optional[torch.device] = None, unpatch_weights: bool = True) -> None:
        """Restore the original weights and attributes; with ``device_to``, move the model there."""
        state = _load_state(self.model)
        self._restore_object_patches(state)
        if unpatch_weights:
            self._unstream(state)
            for key, original in state.backup.items():
                set_attr_param(self.model, key, original)
            state.backup.clear()
            state.applied_patches = None
        if device_to is not None:
            self.model.to(device_to)
            state.device = device_to
            state.loaded_bytes = self.model_size() if device_to == self.load_device else 0

    def partially_unload(self, device_to: torch.device, memory_to_free: int = 0) -> int:
        """Move layers (last first) to ``device_to`` until ``memory_to_free`` bytes are freed; returns the bytes."""
        state = _load_state(self.model)
        freed = 0
        for name, module in reversed(list(self.model.named_modules())):
            if freed >= memory_to_free:
                break
            if name in state.streamed or not isinstance(module, CastWeightBias):
                continue
            size = _module_bytes(module)
            if size == 0:
                continue
            for param in ("weight", "bias"):
                key = f"{name}.{param}" if name else param
                original = state.backup.pop(key, None)
                if original is not None:
                    set_attr_param(self.model, key, original)
            self._stream(name, module, state)
            module.to(device_to)
            freed += size
        state.loaded_bytes = max(0, state.loaded_bytes - freed)
        return freed

    def partially_load(self, device_to: torch.device, extra_memory: float = 0,
                       force_patch_weights: bool = False) -> int:
        before = self.loaded_size()
        budget = before + extra_memory
        self.load(device_to, lowvram_model_memory=0 if budget >= self.model_size() else int(budget),
                  force_patch_weights=force_patch_weights)
        return self.loaded_size() - before

    def lowvram_patch_counter(self) -> int:
        return sum(len(module.__dict__.get("weight_function", [])) + len(module.__dict__.get("bias_function", []))
                   for module in _load_state(self.model).streamed.values())

    def detach(self, unpatch_all: bool = True) -> torch.nn.Module:
        self.model_patches_to(self.offload_device)
        if unpatch_all:
            self.unpatch_model(self.offload_device, unpatch_weights=True)
        return self.model

    def cleanup(self) -> None:
        """Called after sampling; nothing is held beyond the loaded weights."""


__all__ = ["LoadState", "LowVramPatch", "ModelPatcher", "copy_nested_dicts", "get_attr", "set_attr",
           "set_attr_param", "set_model_options_patch_replace", "set_model_options_post_cfg_function",
           "set_model_options_pre_cfg_function"]
