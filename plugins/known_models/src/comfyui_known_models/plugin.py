"""The ``known_models`` plugin: known models in choice lists, downloaded when a workflow needs one that
is not on disk, after every local folder has been searched."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Generator, Optional

from comfy.hookspecs import hookimpl

from comfyui_known_models import catalogue, downloads
from comfyui_known_models.catalogue import HUGGINGFACE_FOLDER

if TYPE_CHECKING:
    import configargparse

    from comfy.cli_args_types import Configuration


@dataclass(frozen=True)
class Settings:
    disabled: bool
    local_dir_mode: bool


_lock = threading.Lock()
# The configuration of the most recently started kernel (the embedded client's may differ from the
# process's); without one, comfy.cli_args.args.
_started: Optional["Configuration"] = None


def settings() -> Settings:
    """This plugin's options from the running kernel's configuration, else the process configuration."""
    configuration = _started
    if configuration is None:
        from comfy.cli_args import args
        configuration = args
    return Settings(disabled=bool(configuration.get("disable_known_models", False)),
                    local_dir_mode=bool(configuration.get("force_hf_local_dir_mode", False)))


def huggingface_repo(repo_id: str, revision: str = "main") -> str:
    """A local folder holding the Hugging Face repository ``repo_id``, downloading it on first use.

    A folder at ``models/huggingface/<owner>/<name>`` wins; then huggingface_hub's cache; then a
    download (unless ``--disable-known-models``). Raises FileNotFoundError when it is nowhere and may
    not be downloaded, and ``comfyui_known_models.errors`` errors when a download fails.
    """
    options = settings()
    path = downloads.snapshot(repo_id, revision, local_dir_mode=options.local_dir_mode,
                              download=not options.disabled)
    if path is None:
        raise FileNotFoundError(f"The Hugging Face repository {repo_id} is not on disk and downloads are disabled "
                                f"(--disable-known-models); put its files in "
                                f"{downloads.model_folders(HUGGINGFACE_FOLDER)[0]}/{repo_id}")
    return path


@hookimpl
def comfyui_add_options(parser: "configargparse.ArgParser") -> None:
    group = parser.add_argument_group("known models")
    group.add_argument("--disable-known-models", action="store_true",
                       help="Do not offer well-known models that are not on disk in choice lists, and never "
                            "download them when a workflow names one.")
    group.add_argument("--force-hf-local-dir-mode", action="store_true",
                       help="Put Hugging Face downloads in the model folders and models/huggingface as plain "
                            "files (the local_dir layout) instead of huggingface_hub's shared cache "
                            "(cache_dir, which models/huggingface_cache may also hold).")


@hookimpl
def comfyui_startup(configuration: "Configuration") -> None:
    global _started
    with _lock:
        _started = configuration


@hookimpl
def comfyui_shutdown(configuration: "Configuration") -> None:
    global _started
    with _lock:
        if _started is configuration:
            _started = None


@hookimpl
def comfyui_register_known_models(register: Callable[..., None]) -> None:
    catalogue.read_catalogue_file(register)


@hookimpl(wrapper=True)
def comfyui_resolve_model(folder_name: str, filename: str) -> Generator[None, Optional[str], Optional[str]]:
    # A wrapper runs around every resolver, the kernel's local folders included, and downloads only
    # when none of them found the file: local files always win.
    found = yield
    if found is not None:
        return found
    options = settings()
    if folder_name == HUGGINGFACE_FOLDER:
        if not catalogue.is_repo_id(filename):
            return None
        return downloads.snapshot(filename, local_dir_mode=options.local_dir_mode, download=not options.disabled)
    if options.disabled:
        return None
    model = catalogue.get_catalogue().find(folder_name, filename)
    if model is None:
        return None
    return downloads.fetch(model, local_dir_mode=options.local_dir_mode)


@hookimpl
def comfyui_model_names(folder_name: str) -> list[str]:
    names = [] if settings().disabled else catalogue.get_catalogue().names(folder_name)
    if folder_name == HUGGINGFACE_FOLDER:
        names.extend(downloads.local_repos())
    return names
