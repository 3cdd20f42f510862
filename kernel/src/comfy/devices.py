"""Compute device backends contributed by plugins (cpu, cuda, mps...), gathered without importing torch."""
from __future__ import annotations

from typing import Any, Optional, Protocol, runtime_checkable

import pluggy

from comfy.plugins import Registry, collect


@runtime_checkable
class DeviceBackend(Protocol):
    """What the kernel and model management ask of a device backend."""

    def is_available(self) -> bool:
        """Whether this backend can run here (its library imports and a device is present)."""

    def devices(self) -> list[Any]:
        """The devices it offers, best first (torch.device objects for torch backends)."""

    def total_memory(self, device: Any) -> int:
        """Bytes of memory on ``device``."""

    def free_memory(self, device: Any) -> int:
        """Bytes free on ``device`` now."""

    def supports_dtype(self, device: Any, dtype: Any) -> bool:
        """Whether ``device`` computes in ``dtype`` efficiently."""


def device_backends(pm: pluggy.PluginManager) -> dict[str, DeviceBackend]:
    """Every registered backend by name, in registration order."""
    registry = Registry("device backend")
    collect(pm, "comfyui_register_device_backends", registry.add)
    return registry.entries


def first_available(pm: pluggy.PluginManager, preferred: Optional[str] = None) -> Optional[tuple[str, DeviceBackend]]:
    """The ``preferred`` backend if available, else the first available one."""
    backends = device_backends(pm)
    if preferred is not None:
        backend = backends.get(preferred)
        if backend is None:
            raise LookupError(f"No device backend named {preferred!r}; registered: {', '.join(backends) or 'none'}")
        return (preferred, backend) if backend.is_available() else None
    for name, backend in backends.items():
        if backend.is_available():
            return name, backend
    return None
