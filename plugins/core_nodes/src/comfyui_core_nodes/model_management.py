"""Which device computes, in which dtype, and which models sit in its memory (ComfyUI's model management API).

Models are ``ModelPatcher``s. ``load_models_gpu`` puts the ones a node needs on their load device,
first moving least recently used models back to CPU memory when memory runs short and keeping what
fits; a model that does not fit is loaded partly and the rest of its weights are streamed per layer
(``--lowvram``/``--novram`` ask for that outright). The device comes from the device backends
registered with ``comfyui_register_device_backends``.
"""
from __future__ import annotations

import enum
import gc
import logging
import math
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Protocol, Sequence

import torch

from comfy.execution_context import (InterruptProcessingException, interrupt_current_processing,
                                     processing_interrupted, throw_exception_if_processing_interrupted)
from comfyui_core_nodes.options import option
from comfyui_core_nodes.ops import cast_to

logger = logging.getLogger(__name__)

OOM_EXCEPTION = torch.cuda.OutOfMemoryError
GIGABYTE = 1024 ** 3
# Memory a sampling step needs beyond the weights, kept free when deciding what fits.
BASE_INFERENCE_MEMORY = int(0.8 * GIGABYTE)
DEFAULT_RESERVED_VRAM = 400 * 1024 * 1024
# Share of free memory partial loading may give to weights when the model does not fit.
MIN_WEIGHT_MEMORY_RATIO = 0.4
# Partial loading is always possible here (ComfyUI turns it off only for DirectML).
lowvram_available = True
FLOAT8_TYPES = tuple(getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, name))


class VRAMState(enum.Enum):
    DISABLED = 0  # no separate compute device memory: the CPU computes
    NO_VRAM = 1  # every weight is streamed from CPU memory
    LOW_VRAM = 2
    NORMAL_VRAM = 3
    HIGH_VRAM = 4
    SHARED = 5  # unified memory (Apple silicon): CPU and GPU share it


class CPUState(enum.Enum):
    GPU = 0
    CPU = 1
    MPS = 2


class Manageable(Protocol):
    """What model management needs of a model (``ModelPatcher`` implements it)."""
    load_device: torch.device
    offload_device: torch.device

    def model_size(self) -> int: ...

    def loaded_size(self) -> int: ...

    def is_clone(self, other: Any) -> bool: ...

    def model_patches_models(self) -> list[Any]: ...

    def load(self, device_to: torch.device, lowvram_model_memory: int = 0, force_patch_weights: bool = False,
             full_load: bool = False) -> None: ...

    def partially_unload(self, device_to: torch.device, memory_to_free: int = 0) -> int: ...

    def detach(self, unpatch_all: bool = True) -> None: ...


@dataclass
class DeviceState:
    """The compute device chosen from the configuration and the registered backends."""
    device: torch.device
    backend: Any
    backends: dict[str, Any]
    cpu_state: CPUState
    vram_state: VRAMState
    total_vram: int
    reserved_vram: int


_lock = threading.RLock()
_state: Optional[DeviceState] = None


def _registered_backends() -> dict[str, Any]:
    from comfy.devices import device_backends
    from comfy.plugins import get_plugin_manager

    from comfyui_core_nodes import devices

    found = dict(device_backends(get_plugin_manager()))
    # The plugin may be in use without being registered on the process plugin manager (a test
    # registering modules by hand); its own backends still answer then.
    for backend in devices.backends(option("cuda_device"), option("default_device")):
        found.setdefault(backend.name, backend)
    return found


def _compute_state() -> DeviceState:
    backends = _registered_backends()
    chosen_name, chosen = "cpu", backends["cpu"]
    if not option("cpu"):
        for name, backend in backends.items():
            if name != "cpu" and backend.is_available():
                chosen_name, chosen = name, backend
                break
    device = chosen.devices()[0]
    if chosen_name == "cpu":
        cpu_state, vram_state = CPUState.CPU, VRAMState.DISABLED
    elif chosen_name == "mps":
        cpu_state, vram_state = CPUState.MPS, VRAMState.SHARED
    else:
        cpu_state, vram_state = CPUState.GPU, VRAMState.NORMAL_VRAM
    total = chosen.total_memory(device)
    if cpu_state == CPUState.GPU:
        if option("lowvram"):
            vram_state = VRAMState.LOW_VRAM
        elif option("novram"):
            vram_state = VRAMState.NO_VRAM
        elif option("highvram") or option("gpu_only"):
            vram_state = VRAMState.HIGH_VRAM
        elif not option("normalvram") and total <= 4 * GIGABYTE:
            # Small cards run better streaming than failing to allocate.
            vram_state = VRAMState.LOW_VRAM
    reserve = option("reserve_vram")
    reserved = int(reserve * GIGABYTE) if reserve is not None else DEFAULT_RESERVED_VRAM
    logger.info("Compute device: %s (%s), VRAM state %s", device, chosen_name, vram_state.name)
    return DeviceState(device, chosen, backends, cpu_state, vram_state, total, reserved)


def device_state() -> DeviceState:
    """The compute device and memory mode, decided on first use from the running configuration."""
    global _state
    with _lock:
        if _state is None:
            _state = _compute_state()
        return _state


def reset_device_state() -> None:
    """Decide the device again on next use (a kernel started with another configuration)."""
    global _state
    with _lock:
        _state = None


def __getattr__(name: str) -> Any:
    # ComfyUI exposes these as module globals; here they follow the running configuration.
    if name == "vram_state":
        return device_state().vram_state
    if name == "cpu_state":
        return device_state().cpu_state
    if name == "total_vram":
        return device_state().total_vram / (1024 * 1024)
    if name == "total_ram":
        return get_total_memory(torch.device("cpu")) / (1024 * 1024)
    if name == "directml_device":
        return None
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- devices -----------------------------------------------------------------------------------------

def get_torch_device() -> torch.device:
    return device_state().device


def get_torch_device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} {torch.cuda.get_device_name(device)}"
    return str(device)


def is_device_type(device: Any, kind: str) -> bool:
    return getattr(device, "type", None) == kind


def is_device_cpu(device: Any) -> bool:
    return is_device_type(device, "cpu")


def is_device_mps(device: Any) -> bool:
    return is_device_type(device, "mps")


def is_device_cuda(device: Any) -> bool:
    return is_device_type(device, "cuda")


def is_device_xpu(device: Any) -> bool:
    return is_device_type(device, "xpu")


def cpu_mode() -> bool:
    return device_state().cpu_state == CPUState.CPU


def mps_mode() -> bool:
    return device_state().cpu_state == CPUState.MPS


def is_nvidia() -> bool:
    return device_state().cpu_state == CPUState.GPU and is_device_cuda(get_torch_device()) \
        and torch.version.cuda is not None


def is_amd() -> bool:
    return device_state().cpu_state == CPUState.GPU and is_device_cuda(get_torch_device()) \
        and torch.version.hip is not None


def is_intel_xpu() -> bool:
    return device_state().cpu_state == CPUState.GPU and is_device_xpu(get_torch_device())


def is_directml_enabled() -> bool:
    return False


def get_autocast_device(dev: Any) -> str:
    return getattr(dev, "type", "cuda")


def supports_fp8_compute(device: Any = None) -> bool:
    """Whether matrix multiplies can run in fp8 (NVIDIA Ada and newer)."""
    device = device if device is not None else get_torch_device()
    if not is_device_cuda(device) or torch.version.cuda is None:
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


def intermediate_device() -> torch.device:
    """Where nodes keep latents and images between nodes."""
    return get_torch_device() if option("gpu_only") else torch.device("cpu")


def unet_offload_device() -> torch.device:
    return get_torch_device() if device_state().vram_state == VRAMState.HIGH_VRAM else torch.device("cpu")


def unet_initial_load_device(parameters: int, dtype: torch.dtype) -> torch.device:
    """Where a diffusion model's weights are first put: the compute device when it has room."""
    state = device_state()
    if state.vram_state in (VRAMState.HIGH_VRAM, VRAMState.SHARED):
        return state.device
    cpu = torch.device("cpu")
    if option("disable_smart_memory") or state.vram_state in (VRAMState.NO_VRAM, VRAMState.DISABLED):
        return cpu
    model_size = dtype_size(dtype) * parameters
    free_device = get_free_memory(state.device)
    if free_device > get_free_memory(cpu) and model_size < free_device:
        return state.device
    return cpu


def text_encoder_device() -> torch.device:
    if option("gpu_only"):
        return get_torch_device()
    if device_state().vram_state in (VRAMState.HIGH_VRAM, VRAMState.NORMAL_VRAM) \
            and should_use_fp16(prioritize_performance=False):
        return get_torch_device()
    return torch.device("cpu")


def text_encoder_offload_device() -> torch.device:
    return get_torch_device() if option("gpu_only") else torch.device("cpu")


def text_encoder_initial_device(load_device: torch.device, offload_device: torch.device,
                                model_size: int = 0) -> torch.device:
    if load_device == offload_device or model_size <= GIGABYTE:
        return offload_device
    if is_device_mps(load_device):
        return load_device
    free_load, free_offload = get_free_memory(load_device), get_free_memory(offload_device)
    if free_load > free_offload * 0.5 and model_size * 1.2 < free_load:
        return load_device
    return offload_device


def vae_device() -> torch.device:
    return torch.device("cpu") if option("cpu_vae") else get_torch_device()


def vae_offload_device() -> torch.device:
    return get_torch_device() if option("gpu_only") else torch.device("cpu")


# -- dtypes ------------------------------------------------------------------------------------------

def dtype_size(dtype: torch.dtype) -> int:
    if dtype in (torch.float16, torch.bfloat16):
        return 2
    if dtype == torch.float32:
        return 4
    return getattr(dtype, "itemsize", 4)


def _backend_for(device: Any) -> Any:
    state = device_state()
    kind = getattr(device, "type", None) or str(device).split(":")[0]
    return state.backends.get(kind, state.backends["cpu"])


def supports_dtype(device: Any, dtype: torch.dtype) -> bool:
    if dtype == torch.float32:
        return True
    if is_device_cpu(device):
        return False
    return _backend_for(device).supports_dtype(device, dtype)


def supports_cast(device: Any, dtype: torch.dtype) -> bool:
    """Whether weights stored in ``dtype`` can be cast to the compute dtype on ``device``."""
    if dtype in (torch.float32, torch.float16):
        return True
    if dtype == torch.bfloat16:
        return True
    if is_device_mps(device):
        return False
    return dtype in FLOAT8_TYPES


def should_use_fp16(device: Any = None, model_params: int = 0, prioritize_performance: bool = True,
                    manual_cast: bool = False) -> bool:
    if device is not None and is_device_cpu(device):
        return False
    if option("force_fp16"):
        return True
    if option("force_fp32"):
        return False
    if device is None:
        device = get_torch_device()
    if is_device_cpu(device):
        return False
    if is_device_mps(device):
        # Apple GPUs that do bf16 prefer it.
        return not _backend_for(device).supports_dtype(device, torch.bfloat16)
    if _backend_for(device).supports_dtype(device, torch.float16):
        return True
    if manual_cast and is_device_cuda(device):
        # Pascal computes fp16 slowly but storing weights in it beats not fitting.
        return (not prioritize_performance) or model_params * 4 > maximum_vram_for_weights(device)
    return False


def should_use_bf16(device: Any = None, model_params: int = 0, prioritize_performance: bool = True,
                    manual_cast: bool = False) -> bool:
    if option("force_bf16"):
        return True
    if device is not None and is_device_cpu(device):
        return False
    if option("force_fp32"):
        return False
    if device is None:
        device = get_torch_device()
    if is_device_cpu(device):
        return False
    return _backend_for(device).supports_dtype(device, torch.bfloat16)


def _flag_dtype(flags: Iterable[tuple[str, Optional[torch.dtype]]]) -> Optional[torch.dtype]:
    for name, dtype in flags:
        if option(name) and dtype is not None:
            return dtype
    return None


def unet_dtype(device: Any = None, model_params: int = 0,
               supported_dtypes: Sequence[torch.dtype] = (torch.float16, torch.bfloat16, torch.float32),
               weight_dtype: Optional[torch.dtype] = None) -> torch.dtype:
    """The dtype the diffusion model's weights are stored in."""
    forced = _flag_dtype((("fp32_unet", torch.float32), ("fp64_unet", torch.float64), ("bf16_unet", torch.bfloat16),
                          ("fp16_unet", torch.float16),
                          ("fp8_e4m3fn_unet", getattr(torch, "float8_e4m3fn", None)),
                          ("fp8_e5m2_unet", getattr(torch, "float8_e5m2", None))))
    if forced is not None:
        return forced
    if model_params < 0:
        model_params = 10 ** 21
    if weight_dtype in FLOAT8_TYPES and model_params * 2 > maximum_vram_for_weights(device):
        return weight_dtype
    if weight_dtype == torch.float16 and torch.float16 in supported_dtypes \
            and should_use_fp16(device, model_params):
        return torch.float16
    for manual in (False, True):
        for dtype in supported_dtypes:
            if dtype == torch.float16 and should_use_fp16(device, model_params, manual_cast=manual):
                return torch.float16
            if dtype == torch.bfloat16 and should_use_bf16(device, model_params, manual_cast=manual):
                return torch.bfloat16
    return torch.float32


def unet_manual_cast(weight_dtype: torch.dtype, inference_device: Any,
                     supported_dtypes: Sequence[torch.dtype] = (torch.float16, torch.bfloat16, torch.float32)
                     ) -> Optional[torch.dtype]:
    """The dtype to compute in when it differs from the weights' dtype, else None."""
    if weight_dtype in (torch.float32, torch.float64):
        return None
    fp16_supported = should_use_fp16(inference_device, prioritize_performance=False)
    if fp16_supported and weight_dtype == torch.float16:
        return None
    bf16_supported = should_use_bf16(inference_device)
    if bf16_supported and weight_dtype == torch.bfloat16:
        return None
    fp16_supported = should_use_fp16(inference_device, prioritize_performance=True)
    for dtype in supported_dtypes:
        if dtype == torch.float16 and fp16_supported:
            return torch.float16
        if dtype == torch.bfloat16 and bf16_supported:
            return torch.bfloat16
    return torch.float32


def text_encoder_dtype(device: Any = None) -> torch.dtype:
    """The dtype text encoder weights are stored in; they compute in fp32 whatever it is."""
    forced = _flag_dtype((("fp8_e4m3fn_text_enc", getattr(torch, "float8_e4m3fn", None)),
                          ("fp8_e5m2_text_enc", getattr(torch, "float8_e5m2", None)),
                          ("fp16_text_enc", torch.float16), ("bf16_text_enc", torch.bfloat16),
                          ("fp32_text_enc", torch.float32)))
    if forced is not None:
        return forced
    # ComfyUI stores text encoders in fp16 on every device, CPU included, and upcasts per layer;
    # doing the same keeps prompt embeddings identical to its.
    return torch.float16


def vae_dtype(device: Any = None, allowed_dtypes: Sequence[torch.dtype] = ()) -> torch.dtype:
    forced = _flag_dtype((("fp16_vae", torch.float16), ("bf16_vae", torch.bfloat16), ("fp32_vae", torch.float32)))
    if forced is not None:
        return forced
    for dtype in allowed_dtypes:
        if dtype == torch.float16 and should_use_fp16(device):
            return dtype
        if dtype == torch.bfloat16 and should_use_bf16(device):
            return dtype
    return torch.float32


def pick_weight_dtype(dtype: Optional[torch.dtype], fallback_dtype: torch.dtype, device: Any = None) -> torch.dtype:
    if dtype is None or dtype_size(dtype) > dtype_size(fallback_dtype):
        dtype = fallback_dtype
    if not supports_cast(device, dtype):
        dtype = fallback_dtype
    return dtype


def lora_compute_dtype(device: Any) -> torch.dtype:
    return torch.float32


def device_supports_non_blocking(device: Any) -> bool:
    return is_device_cuda(device)


def cast_to_device(tensor: torch.Tensor, device: Any, dtype: Optional[torch.dtype],
                   copy: bool = False) -> torch.Tensor:
    return cast_to(tensor, dtype=dtype, device=device, non_blocking=device_supports_non_blocking(device), copy=copy)


def module_size(module: torch.nn.Module) -> int:
    return sum(tensor.nbytes for tensor in module.state_dict().values())


# -- attention flags (what vanilla code asks model management) ---------------------------------------

def xformers_enabled() -> bool:
    return False


def xformers_enabled_vae() -> bool:
    return False


def sage_attention_enabled() -> bool:
    return bool(option("use_sage_attention"))


def flash_attention_enabled() -> bool:
    return bool(option("use_flash_attention"))


def pytorch_attention_enabled() -> bool:
    """Whether SDPA is the default: on CUDA and XPU, or when asked for (ComfyUI's rule)."""
    if option("use_pytorch_cross_attention"):
        return True
    if option("use_split_cross_attention") or option("use_quad_cross_attention"):
        return False
    return device_state().cpu_state == CPUState.GPU and get_torch_device().type in ("cuda", "xpu")


def pytorch_attention_enabled_vae() -> bool:
    return pytorch_attention_enabled() and not is_amd()


def pytorch_attention_flash_attention() -> bool:
    return pytorch_attention_enabled() and get_torch_device().type in ("cuda", "xpu")


def force_upcast_attention_dtype() -> Optional[dict[torch.dtype, torch.dtype]]:
    if option("force_upcast_attention"):
        return {torch.float16: torch.float32}
    return None


# -- memory ------------------------------------------------------------------------------------------

def get_total_memory(dev: Any = None, torch_total_too: bool = False) -> Any:
    dev = dev if dev is not None else get_torch_device()
    total = _backend_for(dev).total_memory(dev)
    return (total, total) if torch_total_too else total


def get_free_memory(dev: Any = None, torch_free_too: bool = False) -> Any:
    dev = dev if dev is not None else get_torch_device()
    free = _backend_for(dev).free_memory(dev)
    if not torch_free_too:
        return free
    if is_device_cuda(dev):
        stats = torch.cuda.memory_stats(dev)
        return free, stats.get("reserved_bytes.all.current", 0) - stats.get("active_bytes.all.current", 0)
    return free, free


def extra_reserved_memory() -> int:
    return device_state().reserved_vram


def minimum_inference_memory() -> int:
    return BASE_INFERENCE_MEMORY + extra_reserved_memory()


def maximum_vram_for_weights(device: Any = None) -> float:
    return get_total_memory(device) * 0.88 - minimum_inference_memory()


def soft_empty_cache(force: bool = False) -> None:
    """Give memory torch's allocator caches back to the device."""
    device = get_torch_device()
    if is_device_mps(device):
        torch.mps.empty_cache()
    elif is_device_xpu(device):
        torch.xpu.empty_cache()
    elif is_device_cuda(device):
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()


class LoadedModel:
    """A model placed on its load device by ``load_models_gpu``."""

    def __init__(self, model: Manageable):
        self.model = model
        self.device: torch.device = model.load_device
        self.currently_used = True

    def model_memory(self) -> int:
        return self.model.model_size()

    def model_loaded_memory(self) -> int:
        return self.model.loaded_size()

    def model_offloaded_memory(self) -> int:
        return self.model.model_size() - self.model.loaded_size()

    def model_memory_required(self, device: torch.device) -> int:
        if device == self.model.current_loaded_device():
            return self.model_offloaded_memory()
        return self.model_memory()

    def model_load(self, lowvram_model_memory: int = 0, force_patch_weights: bool = False) -> None:
        self.model.model_patches_to(self.device)
        self.model.load(self.device, lowvram_model_memory=lowvram_model_memory,
                        force_patch_weights=force_patch_weights, full_load=lowvram_model_memory == 0)

    def model_unload(self, memory_to_free: Optional[int] = None, unpatch_weights: bool = True) -> bool:
        """Free ``memory_to_free`` bytes by moving part of the model, or all of it; True when fully unloaded."""
        if memory_to_free is not None and memory_to_free < self.model.loaded_size():
            freed = self.model.partially_unload(self.model.offload_device, memory_to_free)
            if freed >= memory_to_free:
                return False
        self.model.detach(unpatch_weights)
        return True

    def __repr__(self) -> str:
        return f"<LoadedModel {self.model!r} on {self.device}>"


current_loaded_models: list[LoadedModel] = []


def _index_of(model: Any) -> Optional[int]:
    for index, loaded in enumerate(current_loaded_models):
        if loaded.model is model:
            return index
    return None


def free_memory(memory_required: float, device: torch.device, keep_loaded: Sequence[Any] = ()) -> list[LoadedModel]:
    """Unload least recently used models on ``device`` (all of them for a huge request) until enough is free."""
    with _lock:
        keep = {id(model) for model in keep_loaded}
        candidates = [(-loaded.model_offloaded_memory(), index) for index, loaded in enumerate(current_loaded_models)
                      if loaded.device == device and id(loaded.model) not in keep]
        unloaded: list[int] = []
        smart = not option("disable_smart_memory")
        # Oldest first: the list holds the most recently loaded model first.
        for _, index in sorted(candidates, key=lambda item: (item[0], -item[1])):
            memory_to_free = None
            if smart and not is_device_cpu(device) and math.isfinite(memory_required):
                free = get_free_memory(device)
                if free > memory_required:
                    break
                memory_to_free = int(memory_required - free)
            if current_loaded_models[index].model_unload(memory_to_free):
                unloaded.append(index)
        removed = [current_loaded_models.pop(index) for index in sorted(unloaded, reverse=True)]
        if removed:
            soft_empty_cache()
        return removed


def load_models_gpu(models: Sequence[Any], memory_required: int = 0, force_patch_weights: bool = False,
                    minimum_memory_required: Optional[int] = None, force_full_load: bool = False) -> None:
    """Put ``models`` (and the models their patches need) on their load devices, making room first.

    ``memory_required`` is what the coming computation needs besides weights. A model that does not
    fit in what is left is loaded partly and streams the rest (not with ``force_full_load``).
    """
    with _lock:
        state = device_state()
        inference_memory = minimum_inference_memory()
        extra_memory = max(inference_memory, memory_required + extra_reserved_memory())
        if minimum_memory_required is None:
            minimum_memory_required = extra_memory
        else:
            minimum_memory_required = max(inference_memory, minimum_memory_required + extra_reserved_memory())

        wanted: list[Any] = []
        for model in models:
            for candidate in [model, *model.model_patches_models()]:
                if all(candidate is not other for other in wanted):
                    wanted.append(candidate)

        to_load: list[LoadedModel] = []
        for model in wanted:
            index = _index_of(model)
            if index is not None:
                loaded = current_loaded_models.pop(index)
                loaded.currently_used = True
            else:
                loaded = LoadedModel(model)
            to_load.append(loaded)

        # A clone of a wanted model shares its weights: take its patches off before patching ours.
        for loaded in to_load:
            for index in range(len(current_loaded_models) - 1, -1, -1):
                other = current_loaded_models[index]
                if other.model is not loaded.model and loaded.model.is_clone(other.model):
                    current_loaded_models.pop(index).model.detach(unpatch_all=False)

        required: dict[torch.device, int] = {}
        for loaded in to_load:
            required[loaded.device] = required.get(loaded.device, 0) + loaded.model_memory_required(loaded.device)
        for device, total in required.items():
            if not is_device_cpu(device):
                free_memory(total * 1.1 + extra_memory, device, keep_loaded=wanted)
                if get_free_memory(device) < minimum_memory_required:
                    free_memory(minimum_memory_required, device, keep_loaded=wanted)

        for loaded in to_load:
            device = loaded.model.load_device
            vram = VRAMState.DISABLED if is_device_cpu(device) else state.vram_state
            lowvram_model_memory = 0
            if vram in (VRAMState.LOW_VRAM, VRAMState.NORMAL_VRAM) and not force_full_load:
                already = loaded.model_loaded_memory()
                free = get_free_memory(device) + already
                budget = max(0, free - minimum_memory_required,
                             min(free * MIN_WEIGHT_MEMORY_RATIO, free - minimum_inference_memory()))
                lowvram_model_memory = int(budget - already)
                if budget >= loaded.model_memory():
                    lowvram_model_memory = 0
                elif lowvram_model_memory <= 0:
                    lowvram_model_memory = 1
            if vram == VRAMState.NO_VRAM:
                lowvram_model_memory = 1
            loaded.model_load(lowvram_model_memory, force_patch_weights=force_patch_weights)
            current_loaded_models.insert(0, loaded)


def load_model_gpu(model: Any) -> None:
    load_models_gpu([model])


def loaded_models(only_currently_used: bool = False) -> list[Any]:
    with _lock:
        return [loaded.model for loaded in current_loaded_models
                if loaded.currently_used or not only_currently_used]


def unload_all_models() -> None:
    """Move every model back to its offload device and remove its weight patches (``POST /free``)."""
    with _lock:
        devices = {loaded.device for loaded in current_loaded_models}
        for device in devices:
            free_memory(float("inf"), device)
        gc.collect()


def unload_model_clones(model: Any, unload_weights_only: bool = True) -> None:
    with _lock:
        for index in range(len(current_loaded_models) - 1, -1, -1):
            other = current_loaded_models[index].model
            if other is not model and model.is_clone(other):
                current_loaded_models.pop(index).model.detach()


def cleanup_models() -> None:
    """Kept for vanilla callers: loaded models here are held strongly, so nothing dies unseen."""


__all__ = [
    "CPUState", "DeviceState", "InterruptProcessingException", "LoadedModel", "OOM_EXCEPTION", "VRAMState",
    "cast_to", "cast_to_device", "cpu_mode", "get_autocast_device", "supports_fp8_compute", "current_loaded_models", "device_state", "dtype_size",
    "extra_reserved_memory", "flash_attention_enabled", "force_upcast_attention_dtype", "free_memory",
    "get_free_memory", "get_torch_device", "get_torch_device_name", "get_total_memory", "intermediate_device",
    "interrupt_current_processing", "is_device_cpu", "is_device_cuda", "is_device_mps", "is_device_xpu",
    "load_model_gpu", "load_models_gpu", "loaded_models", "minimum_inference_memory", "module_size", "mps_mode",
    "pick_weight_dtype", "processing_interrupted", "pytorch_attention_enabled", "reset_device_state",
    "sage_attention_enabled", "should_use_bf16", "should_use_fp16", "soft_empty_cache", "supports_cast",
    "supports_dtype", "text_encoder_device", "text_encoder_dtype", "text_encoder_initial_device",
    "text_encoder_offload_device", "throw_exception_if_processing_interrupted", "unet_dtype",
    "unet_initial_load_device", "unet_manual_cast", "unet_offload_device", "unload_all_models", "vae_device",
    "vae_dtype", "vae_offload_device",
]
