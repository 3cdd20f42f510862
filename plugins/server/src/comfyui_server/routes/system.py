"""What the server is and runs on: /system_stats, /features, /node_replacements."""
from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any, Optional, TypedDict

from aiohttp import web

from comfyui_server.frontend import FRONTEND_PACKAGE, TEMPLATES_PACKAGE, package_version

if TYPE_CHECKING:
    from comfyui_server.server import PromptServer

logger = logging.getLogger(__name__)


class DeviceStats(TypedDict):
    name: str
    type: str
    index: Optional[int]
    vram_total: int
    vram_free: int
    torch_vram_total: int
    torch_vram_free: int


def ram() -> tuple[int, int]:
    """(total, available) bytes of system memory, without psutil."""
    try:
        with open("/proc/meminfo", encoding="ascii") as stream:
            fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in stream if line.strip()}
        return fields.get("MemTotal", 0), fields.get("MemAvailable", fields.get("MemFree", 0))
    except (OSError, ValueError, IndexError):
        pass
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        return total, free
    except (ValueError, OSError, AttributeError):
        return 0, 0


def devices(server: "PromptServer", ram_total: int, ram_free: int) -> list[DeviceStats]:
    """Devices of the available backends that plugins registered; the CPU when there is none."""
    from comfy.devices import device_backends

    found: list[DeviceStats] = []
    for name, backend in device_backends(server.runtime.plugin_manager).items():
        try:
            if not backend.is_available():
                continue
            for device in backend.devices():
                total, free = int(backend.total_memory(device)), int(backend.free_memory(device))
                found.append({"name": str(device), "type": str(getattr(device, "type", name)),
                              "index": getattr(device, "index", None), "vram_total": total, "vram_free": free,
                              "torch_vram_total": total, "torch_vram_free": free})
        except Exception:  # a broken backend plugin must not take the about panel down with it
            logger.exception("device backend %r failed to describe its devices", name)
    if found:
        return found
    return [{"name": "cpu", "type": "cpu", "index": None, "vram_total": ram_total, "vram_free": ram_free,
             "torch_vram_total": ram_total, "torch_vram_free": ram_free}]


def system_stats(server: "PromptServer") -> dict[str, Any]:
    ram_total, ram_free = ram()
    frontend_version = package_version(FRONTEND_PACKAGE) or ""
    templates_version = package_version(TEMPLATES_PACKAGE) or ""
    return {
        "system": {
            "os": sys.platform,
            "ram_total": ram_total,
            "ram_free": ram_free,
            "comfyui_version": package_version("comfyui") or package_version("comfyui-kernel") or "0.0.0",
            # The installed versions are the ones this server was built and tested with.
            "required_frontend_version": frontend_version,
            "installed_templates_version": templates_version,
            "required_templates_version": templates_version,
            "python_version": sys.version,
            "pytorch_version": package_version("torch") or "",
            "embedded_python": os.path.basename(os.path.dirname(sys.executable)) == "python_embeded",
            "argv": list(sys.argv),
        },
        "devices": devices(server, ram_total, ram_free),
    }


def add_routes(routes: web.RouteTableDef, server: "PromptServer") -> None:
    @routes.get("/system_stats")
    async def get_system_stats(request: web.Request) -> web.Response:
        return web.json_response(system_stats(server))

    @routes.get("/features")
    async def get_features(request: web.Request) -> web.Response:
        return web.json_response(server.feature_flags())

    @routes.get("/node_replacements")
    async def get_node_replacements(request: web.Request) -> web.Response:
        # No plugin supplies replacements yet, so the flag stays off and this map is empty.
        return web.json_response({})


__all__ = ["add_routes", "devices", "ram", "system_stats"]
