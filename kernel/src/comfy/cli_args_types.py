"""The parsed configuration type: every option by its argparse dest, as keys and as attributes."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    import configargparse

# A ``comfyui.custom_config`` entry point: gets the parser, returns it (or another one), or None.
ConfigurationExtender = Callable[["configargparse.ArgParser"], Optional["configargparse.ArgParser"]]


class Configuration(dict):
    """Parsed options keyed by argparse dest: ``config.cache_lru`` is ``config["cache_lru"]``.

    The keys are the kernel's options plus those of the plugins that were enabled when the
    parser was built, so an option of a missing plugin is absent rather than None.
    ``config_files`` lists the config files that were read.
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(
                f"the configuration has no option {name!r}: options come from the kernel and from "
                f"installed, enabled plugins (see `comfyui --help`)") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(f"the configuration has no option {name!r}") from None

    def __dir__(self) -> list[str]:
        return [*super().__dir__(), *(key for key in self if isinstance(key, str))]

    def copy(self) -> "Configuration":
        return Configuration(self)


__all__ = ["Configuration", "ConfigurationExtender"]
