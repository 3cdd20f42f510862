"""``args``: this process's configuration, parsed on first use from config files and ``COMFYUI_*`` variables
(never ``sys.argv``, which belongs to the host) until the ``comfyui`` launcher sets its full parse."""
from __future__ import annotations

import threading
from typing import Any, Optional

from comfy.cli_args_types import Configuration

args: Configuration  # provided by __getattr__ so that importing this module parses nothing

_configuration: Optional[Configuration] = None
_lock = threading.RLock()
_parsing = False


def set_configuration(configuration: Optional[Configuration]) -> None:
    """Install the process configuration; None makes the next use of ``args`` parse again."""
    global _configuration
    with _lock:
        _configuration = configuration


def get_configuration() -> Configuration:
    """The process configuration, parsed from config files and the environment if none was set."""
    global _configuration, _parsing
    with _lock:
        if _configuration is None:
            if _parsing:
                raise RuntimeError("comfy.cli_args.args was read while the configuration was being parsed, "
                                   "probably by a plugin at import time; read it inside a hook instead")
            _parsing = True
            try:
                from comfy.configuration import default_configuration
                _configuration = default_configuration()
            finally:
                _parsing = False
        return _configuration


def __getattr__(name: str) -> Any:
    if name == "args":
        return get_configuration()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["args", "get_configuration", "set_configuration"]
