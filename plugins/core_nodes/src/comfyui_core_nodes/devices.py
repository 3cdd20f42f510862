"""Torch device backends (cpu, cuda, mps, xpu): which devices exist, their memory and the dtypes they compute well.

They implement ``comfy.devices.DeviceBackend`` and are registered through ``comfyui_register_device_backends``;
model management asks the first available one (or the one ``--cpu`` names) for its devices.
"""
from __future__ import annotations

import os
from typing import Any

import torch


def _system_memory() -> tuple[int, int]:
    import psutil

    memory = psutil.virtual_memory()
    return int(memory.total), int(memory.available)


class CPUBackend:
    """Always available; memory is the machine's RAM."""
    name = "cpu"

    def is_available(self) -> bool:
        return True

    def devices(self) -> list[torch.device]:
        return [torch.device("cpu")]

    def total_memory(self, device: Any) -> int:
        return _system_memory()[0]

    def free_memory(self, device: Any) -> int:
        return _system_memory()[1]

    def supports_dtype(self, device: Any, dtype: Any) -> bool:
        # fp16/bf16 matmuls work on CPU but are far slower than fp32 there.
        return dtype in (torch.float32, torch.float64)


class CUDABackend:
    """NVIDIA (and ROCm builds of torch, which answer as cuda) GPUs."""
    name = "cuda"

    def __init__(self, visible_device: int | None = None, default_device: int | None = None):
        self.visible_device = visible_device
        self.default_device = default_device

    def is_available(self) -> bool:
        if self.visible_device is not None and "CUDA_VISIBLE_DEVICES" not in os.environ:
            # Only effective before CUDA initialises, which is why it happens on first question.
            os.environ["CUDA_VISIBLE_DEVICES"] = str(self.visible_device)
        return torch.cuda.is_available() and torch.cuda.device_count() > 0

    def devices(self) -> list[torch.device]:
        indices = list(range(torch.cuda.device_count()))
        if self.default_device is not None and self.default_device in indices:
            indices.remove(self.default_device)
            indices.insert(0, self.default_device)
        return [torch.device("cuda", index) for index in indices]

    def total_memory(self, device: Any) -> int:
        return int(torch.cuda.mem_get_info(device)[1])

    def free_memory(self, device: Any) -> int:
        free_driver, _ = torch.cuda.mem_get_info(device)
        stats = torch.cuda.memory_stats(device)
        # Memory torch's caching allocator holds but does not use is free for our purposes.
        cached_unused = stats.get("reserved_bytes.all.current", 0) - stats.get("active_bytes.all.current", 0)
        return int(free_driver + cached_unused)

    def supports_dtype(self, device: Any, dtype: Any) -> bool:
        if dtype == torch.float32:
            return True
        major, _ = torch.cuda.get_device_capability(device)
        if dtype == torch.bfloat16:
            return major >= 8
        if dtype == torch.float16:
            return major >= 7 or torch.version.hip is not None
        return False


class MPSBackend:
    """Apple silicon GPUs; memory is shared with the system."""
    name = "mps"

    def is_available(self) -> bool:
        return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()

    def devices(self) -> list[torch.device]:
        return [torch.device("mps")]

    def total_memory(self, device: Any) -> int:
        return _system_memory()[0]

    def free_memory(self, device: Any) -> int:
        return _system_memory()[1]

    def supports_dtype(self, device: Any, dtype: Any) -> bool:
        if dtype in (torch.float32, torch.float16):
            return True
        if dtype == torch.bfloat16:
            # macOS 14 added bf16 to MPS; older systems fail at the first kernel.
            try:
                torch.ones(1, dtype=torch.bfloat16, device="mps").sum()
            except RuntimeError:
                return False
            return True
        return False


class XPUBackend:
    """Intel GPUs through torch.xpu."""
    name = "xpu"

    def is_available(self) -> bool:
        return hasattr(torch, "xpu") and torch.xpu.is_available()

    def devices(self) -> list[torch.device]:
        return [torch.device("xpu", index) for index in range(torch.xpu.device_count())]

    def total_memory(self, device: Any) -> int:
        return int(torch.xpu.get_device_properties(device).total_memory)

    def free_memory(self, device: Any) -> int:
        stats = torch.xpu.memory_stats(device)
        used = stats.get("active_bytes.all.current", 0)
        cached_unused = stats.get("reserved_bytes.all.current", 0) - used
        return int(self.total_memory(device) - stats.get("reserved_bytes.all.current", 0) + cached_unused)

    def supports_dtype(self, device: Any, dtype: Any) -> bool:
        if dtype in (torch.float32, torch.float16):
            return True
        return dtype == torch.bfloat16 and torch.xpu.is_bf16_supported()


def backends(visible_cuda_device: int | None = None, default_device: int | None = None) -> list[Any]:
    """The built-in backends, best first (cpu last, so any accelerator present wins)."""
    return [CUDABackend(visible_cuda_device, default_device), MPSBackend(), XPUBackend(), CPUBackend()]


__all__ = ["CPUBackend", "CUDABackend", "MPSBackend", "XPUBackend", "backends"]
