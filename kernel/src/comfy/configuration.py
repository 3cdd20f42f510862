"""comfyui's configuration: kernel options, plugins' options and ``comfyui.custom_config`` extenders, read
from the command line, then ``COMFYUI_*`` variables, then config files, then defaults."""
from __future__ import annotations

import argparse
import json
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional, Sequence

import configargparse
import pluggy

from comfy.cli_args_types import Configuration, ConfigurationExtender

PROG = "comfyui"
ENV_PREFIX = "COMFYUI_"
DEFAULT_CONFIG_FILES = ("config.yaml", "config.json", "config.cfg", "config.ini")
CUSTOM_CONFIG_GROUP = "comfyui.custom_config"
LOGGING_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigurationError(Exception):
    """A ``comfyui.custom_config`` entry point failed while extending the parser."""


class ConfigFileFormats(configargparse.ConfigFileParser):
    """Reads and writes each config file in the format its extension names.

    ``.yaml``/``.yml`` are YAML, ``.json`` is JSON, ``.ini``/``.cfg`` (and anything else) use
    configargparse's ``key = value`` syntax, which also accepts flat YAML.
    """

    def __init__(self) -> None:
        super().__init__()
        # write_config_file() sets this from the output path before serializing.
        self.write_suffix = ".yaml"

    @staticmethod
    def _format(suffix: str) -> configargparse.ConfigFileParser:
        if suffix in (".yaml", ".yml"):
            return configargparse.YAMLConfigFileParser()
        if suffix == ".json":
            return _JSONConfigFileParser()
        return configargparse.DefaultConfigFileParser()

    def get_syntax_description(self) -> str:
        return ("Config files are YAML (.yaml, .yml), JSON (.json) or 'key = value' lines (.ini, .cfg); "
                "keys are option names without the leading dashes.")

    def parse(self, stream: Any) -> "OrderedDict[str, Any]":
        items = self._format(Path(getattr(stream, "name", "")).suffix.lower()).parse(stream)
        # An empty list means "not set": passed on it would become a bare `--option` and fail.
        return OrderedDict((key, value) for key, value in items.items() if value != [])

    def serialize(self, items: "OrderedDict[str, Any]") -> str:
        return self._format(self.write_suffix).serialize(
            OrderedDict((key, value) for key, value in items.items() if value != []))


class _JSONConfigFileParser(configargparse.ConfigFileParser):
    def parse(self, stream: Any) -> "OrderedDict[str, Any]":
        try:
            document = json.load(stream)
        except json.JSONDecodeError as error:
            raise configargparse.ConfigFileParserException(
                f"Couldn't parse config file {getattr(stream, 'name', 'stream')}: {error}") from error
        if not isinstance(document, dict):
            raise configargparse.ConfigFileParserException(
                f"config file {getattr(stream, 'name', 'stream')} must hold a JSON object of options")
        items: OrderedDict[str, Any] = OrderedDict()
        for key, value in document.items():
            if value is None:
                continue
            if isinstance(value, dict):
                raise configargparse.ConfigFileParserException(
                    f"option {key!r} in {getattr(stream, 'name', 'stream')} is an object; options take a "
                    f"value or a list")
            # configargparse expects strings or lists, and reads "true"/"false" for flags.
            if isinstance(value, bool):
                value = "true" if value else "false"
            items[key] = value if isinstance(value, list) else str(value)
        return items

    def serialize(self, items: "OrderedDict[str, Any]") -> str:
        return json.dumps(dict(items), indent=2, default=str) + "\n"


class ArgParser(configargparse.ArgParser):
    """configargparse's parser that names the file of an unknown config key and accepts dest spellings."""

    def get_possible_config_keys(self, action: argparse.Action) -> list[str]:
        keys = super().get_possible_config_keys(action)
        # `cache_lru` as well as `cache-lru`: the underscored spelling is how Configuration shows it.
        underscored = [key.replace("-", "_") for key in keys if not key.startswith(tuple(self.prefix_chars))]
        return keys + [key for key in underscored if key not in keys]

    def parse_known_args(self, args: Optional[Sequence[str]] = None, namespace: Optional[argparse.Namespace] = None,
                         **kwargs: Any) -> tuple[argparse.Namespace, list[str]]:
        namespace, unknown = super().parse_known_args(args, namespace, **kwargs)
        for source, settings in self.get_source_to_settings_dict().items():
            kind, _, path = source.partition("|")
            if kind != "config_file":
                continue
            for key, (action, _value) in settings.items():
                if action is None:
                    self.error(f"unknown option {key!r} in config file {path}: no option --{key.lstrip('-')} "
                               f"exists (is the plugin that adds it installed and enabled?)")
        return namespace, unknown

    def write_config_file(self, parsed_namespace: argparse.Namespace, output_file_paths: list[str],
                          exit_after: bool = False) -> None:
        if output_file_paths and isinstance(self._config_file_parser, ConfigFileFormats):
            self._config_file_parser.write_suffix = Path(output_file_paths[0]).suffix.lower()
        super().write_config_file(parsed_namespace, output_file_paths, exit_after)


class ListAction(argparse.Action):
    """Collects values across repeated uses, splitting comma-separated ones (handy in env variables)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: Optional[str] = None) -> None:
        items = list(getattr(namespace, self.dest, None) or [])
        for value in values if isinstance(values, list) else [values]:
            items.extend(part.strip() for part in str(value).split(",") if part.strip())
        setattr(namespace, self.dest, items)


def _new_parser(**kwargs: Any) -> ArgParser:
    return ArgParser(
        prog=PROG,
        default_config_files=list(DEFAULT_CONFIG_FILES),
        config_file_parser_class=ConfigFileFormats,
        auto_env_var_prefix=ENV_PREFIX,
        args_for_setting_config_path=["-c", "--config"],
        config_arg_help_message="Read options from this config file (YAML, JSON or INI).",
        # Abbreviations would change meaning as plugins add options, and would let the light
        # pre-parse mistake another option for --disable-plugins.
        allow_abbrev=False,
        **kwargs,
    )


def _add_disable_plugins(parser: configargparse.ArgParser) -> None:
    parser.add_argument("--disable-plugins", nargs="+", action=ListAction, default=[], metavar="NAME",
                        help="Do not load these plugins (entry point names in the comfyui.plugins group); "
                             "their options disappear too. Comma-separated lists are accepted.")


def _add_kernel_options(parser: configargparse.ArgParser) -> None:
    paths = parser.add_argument_group("paths")
    paths.add_argument("-w", "--cwd", default=None,
                       help="Working directory: models/, input/, output/, temp/, user/ and custom_nodes/ "
                            "live here unless overridden. Defaults to the current directory.")
    paths.add_argument("--base-directory", default=None,
                       help="Base directory for models/, custom_nodes/, input/, output/, temp/ and user/.")
    paths.add_argument("--base-paths", nargs="+", action=ListAction, default=[],
                       help="More base directories, each searched for its own models/ subfolders.")
    paths.add_argument("--input-directory", default=None, help="Input directory; overrides the base directory.")
    paths.add_argument("--output-directory", default=None, help="Output directory; overrides the base directory.")
    paths.add_argument("--temp-directory", default=None, help="Temp directory; overrides the base directory.")
    paths.add_argument("--user-directory", default=None, help="User directory; overrides the base directory.")
    paths.add_argument("--extra-model-paths-config", nargs="+", action=ListAction, default=[], metavar="PATH",
                       help="Read extra model folders from these extra_model_paths.yaml files.")
    paths.add_argument("--create-directories", action="store_true",
                       help="Create the model, input, output and temp directories, then exit.")

    caching = parser.add_argument_group("caching").add_mutually_exclusive_group()
    caching.add_argument("--cache-classic", action="store_true",
                         help="Keep every node output until its inputs change (the default).")
    caching.add_argument("--cache-lru", type=int, default=0, metavar="N",
                         help="Keep at most N node outputs, least recently used dropped first.")
    caching.add_argument("--cache-none", action="store_true",
                         help="Keep no node outputs: less memory, every node runs every time.")

    parser.add_argument("--logging-level", type=lambda level: str(level).upper(), default="INFO",
                        choices=LOGGING_LEVELS, help="Logging level.")

    plugins = parser.add_argument_group("plugins")
    _add_disable_plugins(plugins)
    plugins.add_argument("--list-plugins", action="store_true",
                         help="List the active plugins with their distributions, then exit.")

    custom_nodes = parser.add_argument_group("custom nodes")
    custom_nodes.add_argument("--disable-all-custom-nodes", action="store_true",
                              help="Load no custom nodes, neither from custom_nodes/ folders nor from installed packages.")
    custom_nodes.add_argument("--whitelist-custom-nodes", nargs="+", action=ListAction, default=[],
                              help="Custom node folders or packages to load even with --disable-all-custom-nodes.")
    custom_nodes.add_argument("--blacklist-custom-nodes", nargs="+", action=ListAction, default=[],
                              help="Custom node folders or packages never to load; shell-style globs are accepted.")

    parser.add_argument("--workflows", nargs="+", action=ListAction, default=[], metavar="FILE",
                        help="Run these API-format workflow files and print each one's outputs as a line "
                             "of JSON on standard out; `-` reads standard in.")


def _apply_custom_config(parser: configargparse.ArgParser, pm: pluggy.PluginManager) -> configargparse.ArgParser:
    from importlib.metadata import entry_points

    for entry_point in entry_points(group=CUSTOM_CONFIG_GROUP):
        if pm.is_blocked(entry_point.name):
            continue
        try:
            extend: ConfigurationExtender = entry_point.load()
            extended = extend(parser)
        except Exception as error:
            dist = entry_point.dist
            origin = f" from {dist.name} {dist.version}" if dist is not None else ""
            raise ConfigurationError(f"{CUSTOM_CONFIG_GROUP} entry point {entry_point.name!r} "
                                     f"({entry_point.value}){origin} failed: {error}") from error
        if extended is not None:
            parser = extended
    return parser


def make_parser(pm: Optional[pluggy.PluginManager] = None) -> configargparse.ArgParser:
    """The full parser: kernel options, each enabled plugin's options, then ``comfyui.custom_config``.

    ``pm`` defaults to the process-wide plugin manager.
    """
    if pm is None:
        from comfy.plugins import get_plugin_manager
        pm = get_plugin_manager()
    parser = _new_parser(
        description="comfyui: run ComfyUI workflows on a plugin kernel.",
        args_for_writing_out_config_file=["--write-out-config-file"],
        write_out_config_file_arg_help_message="Write the options given so far to this config file "
                                               "(format from its extension), then exit.",
    )
    _add_kernel_options(parser)
    pm.hook.comfyui_add_options(parser=parser)
    return _apply_custom_config(parser, pm)


def _to_configuration(parser: configargparse.ArgParser, namespace: argparse.Namespace) -> Configuration:
    configuration = Configuration(vars(namespace))
    configuration.config_files = [source.partition("|")[2] for source in parser.get_source_to_settings_dict()
                                  if source.startswith("config_file|")]
    return configuration


def parse_configuration(argv: Optional[Sequence[str]] = None,
                        pm: Optional[pluggy.PluginManager] = None) -> Configuration:
    """Parse ``argv`` (``sys.argv[1:]`` when None) with the environment and config files.

    Unknown command-line options and unknown config file keys are errors (argparse's exit 2).
    """
    parser = make_parser(pm)
    namespace = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    return _to_configuration(parser, namespace)


def default_configuration(pm: Optional[pluggy.PluginManager] = None) -> Configuration:
    """Defaults overlaid by config files and ``COMFYUI_*`` variables, never ``sys.argv``.

    This is what embedded clients and ``comfy.cli_args.args`` use: the host's command line belongs
    to the host (pytest, a web app...), while the environment and config files still configure us.
    """
    return parse_configuration([], pm)


def disabled_plugins(argv: Optional[Sequence[str]] = None) -> list[str]:
    """Plugin names given to ``--disable-plugins`` anywhere (command line, environment, config file).

    A light pre-parse that runs before plugins load, so configuration can block a plugin before its
    options exist; every other option is ignored here.
    """
    parser = _new_parser(add_help=False, ignore_unknown_config_file_keys=True)
    _add_disable_plugins(parser)
    namespace, _ = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    return namespace.disable_plugins


__all__ = [
    "ArgParser",
    "ConfigFileFormats",
    "ConfigurationError",
    "ListAction",
    "default_configuration",
    "disabled_plugins",
    "make_parser",
    "parse_configuration",
]
