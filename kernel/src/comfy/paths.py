"""Model, input and output folders behind ComfyUI's ``folder_paths`` API, so vanilla custom nodes work.
Model lookups go through the ``comfyui_resolve_model`` and ``comfyui_model_names`` plugin hooks."""
from __future__ import annotations

import logging
import mimetypes
import os
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional

logger = logging.getLogger(__name__)

supported_pt_extensions: set[str] = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}

# Folder name, its subfolders of <base>/models in lookup order, and the extensions it lists
# (None: the shared supported_pt_extensions set, which nodes sometimes extend in place).
MODEL_FOLDERS: tuple[tuple[str, tuple[str, ...], Optional[frozenset[str]]], ...] = (
    ("checkpoints", ("checkpoints",), None),
    ("configs", ("configs",), frozenset({".yaml"})),
    ("loras", ("loras",), None),
    ("vae", ("vae",), None),
    ("text_encoders", ("text_encoders", "clip"), None),
    ("diffusion_models", ("unet", "diffusion_models"), None),
    ("clip_vision", ("clip_vision",), None),
    ("style_models", ("style_models",), None),
    ("embeddings", ("embeddings",), None),
    ("diffusers", ("diffusers",), frozenset({"folder"})),
    ("vae_approx", ("vae_approx",), None),
    ("controlnet", ("controlnet", "t2i_adapter"), None),
    ("gligen", ("gligen",), None),
    ("upscale_models", ("upscale_models",), None),
    ("latent_upscale_models", ("latent_upscale_models",), None),
    ("hypernetworks", ("hypernetworks",), None),
    ("photomaker", ("photomaker",), None),
    ("classifiers", ("classifiers",), frozenset({""})),
    ("model_patches", ("model_patches",), None),
    ("audio_encoders", ("audio_encoders",), None),
    ("background_removal", ("background_removal",), None),
    ("frame_interpolation", ("frame_interpolation",), None),
    ("geometry_estimation", ("geometry_estimation",), None),
    ("optical_flow", ("optical_flow",), None),
    ("detection", ("detection",), None),
)
# custom_nodes sits beside models/, not inside it, and lists folders rather than files.
CUSTOM_NODES = "custom_nodes"
LEGACY_FOLDER_NAMES = {"clip": "text_encoders", "unet": "diffusion_models"}
APPLICATION_DIRECTORIES = ("input", "output", "temp", "user")
EXTRA_MODEL_PATHS_FILE = "extra_model_paths.yaml"
SYSTEM_USER_PREFIX = "__"

FolderEntry = tuple[list[str], set[str]]


class OutputPathError(ValueError):
    """A save path would land outside the output directory."""


class SaveImagePath(NamedTuple):
    full_output_folder: str
    filename: str
    counter: int
    subfolder: str
    filename_prefix: str


@dataclass
class _Listing:
    """A folder's file list with what it was computed from, to tell when it is stale."""
    files: list[str]
    directory_mtimes: dict[str, float]
    folders: tuple[str, ...]
    extensions: frozenset[str]


@dataclass
class FolderPaths:
    """Every folder the kernel knows: model folders by name, and the input/output/temp/user directories."""
    base_path: str
    extra_base_paths: list[str] = field(default_factory=list)
    folder_names_and_paths: dict[str, FolderEntry] = field(default_factory=dict)
    input_directory: str = ""
    output_directory: str = ""
    temp_directory: str = ""
    user_directory: str = ""
    filename_list_cache: dict[str, _Listing] = field(default_factory=dict)

    @classmethod
    def for_bases(cls, base_path: str, extra_base_paths: Iterable[str] = ()) -> "FolderPaths":
        """ComfyUI's layout under ``base_path``, with each extra base's models/ searched after it."""
        state = cls(base_path=os.path.abspath(base_path),
                    extra_base_paths=[os.path.abspath(path) for path in extra_base_paths])
        bases = (state.base_path, *state.extra_base_paths)
        for name, subfolders, extensions in MODEL_FOLDERS:
            folders = [os.path.join(base, "models", subfolder) for base in bases for subfolder in subfolders]
            state.folder_names_and_paths[name] = (
                folders, supported_pt_extensions if extensions is None else set(extensions))
        state.folder_names_and_paths[CUSTOM_NODES] = ([os.path.join(base, CUSTOM_NODES) for base in bases], set())
        for name in APPLICATION_DIRECTORIES:
            setattr(state, f"{name}_directory", os.path.join(state.base_path, name))
        return state

    @property
    def models_dir(self) -> str:
        return os.path.join(self.base_path, "models")

    def add_model_folder_path(self, folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
        folder_name = map_legacy(folder_name)
        if folder_name not in self.folder_names_and_paths:
            self.folder_names_and_paths[folder_name] = ([full_folder_path], set())
            return
        paths = self.folder_names_and_paths[folder_name][0]
        if full_folder_path in paths:
            if is_default and paths[0] != full_folder_path:
                paths.remove(full_folder_path)
                paths.insert(0, full_folder_path)
        elif is_default:
            paths.insert(0, full_folder_path)
        else:
            paths.append(full_folder_path)

    def get_folder_paths(self, folder_name: str) -> list[str]:
        return list(self.folder_names_and_paths[map_legacy(folder_name)][0])

    def local_full_path(self, folder_name: str, filename: str) -> Optional[str]:
        """The first file named ``filename`` in the folder's paths, or None; never outside them."""
        entry = self.folder_names_and_paths.get(map_legacy(folder_name))
        relative = _contained_relative_path(filename)
        if entry is None or relative is None:
            return None
        for folder in entry[0]:
            candidate = os.path.join(folder, relative)
            if os.path.isfile(candidate):
                return candidate
            if os.path.islink(candidate):
                logger.warning("%s is a link to nothing; skipping it", candidate)
        return None

    def local_filename_list(self, folder_name: str) -> list[str]:
        """Files under the folder's paths with its extensions, relative to their folder; cached until
        a directory's modification time changes or the folder's paths change."""
        folder_name = map_legacy(folder_name)
        entry = self.folder_names_and_paths.get(folder_name)
        if entry is None:
            return []
        folders, extensions = tuple(entry[0]), frozenset(entry[1])
        cached = self.filename_list_cache.get(folder_name)
        if cached is not None and cached.folders == folders and cached.extensions == extensions \
                and not _stale(cached):
            return list(cached.files)
        files: set[str] = set()
        mtimes: dict[str, float] = {}
        for folder in folders:
            found, folder_mtimes = recursive_search(folder, excluded_dir_names=[".git"])
            files.update(filter_files_extensions(found, extensions))
            mtimes.update(folder_mtimes)
        listing = _Listing(sorted(files), mtimes, folders, extensions)
        self.filename_list_cache[folder_name] = listing
        return list(listing.files)

    def directories(self) -> dict[str, str]:
        return {name: getattr(self, f"{name}_directory") for name in APPLICATION_DIRECTORIES}


def _stale(listing: _Listing) -> bool:
    for directory, mtime in listing.directory_mtimes.items():
        try:
            if os.path.getmtime(directory) != mtime:
                return True
        except OSError:
            return True
    # A configured folder that did not exist when listed may exist now.
    return any(folder not in listing.directory_mtimes and os.path.isdir(folder) for folder in listing.folders)


def _contained_relative_path(filename: str) -> Optional[str]:
    """``filename`` as a relative path that cannot climb out of its folder, or None."""
    if os.sep == "/":
        # Workflows saved on Windows spell subfolders with backslashes.
        filename = filename.replace("\\", "/")
    normalized = os.path.normpath(filename)
    if os.path.isabs(normalized) or os.path.splitdrive(normalized)[0] or normalized == os.pardir \
            or normalized.startswith(os.pardir + os.sep) or normalized == os.curdir:
        return None
    return normalized


# The current folders: the module functions, and vanilla nodes through them, act on this one.
_state: Optional[FolderPaths] = None


def get_state() -> FolderPaths:
    """The current folders, configured from ``comfy.cli_args.args`` on first use."""
    if _state is None:
        from comfy.cli_args import get_configuration
        return configure_paths(get_configuration())
    return _state


def set_state(state: Optional[FolderPaths]) -> None:
    """Install ``state`` as the current folders; None configures again from ``args`` on next use."""
    global _state
    _state = state


def configure_paths(configuration: Mapping[str, Any]) -> FolderPaths:
    """Build the folders a configuration describes, make them current and return them.

    Bases are ``--cwd``, ``--base-directory`` and ``--base-paths`` in that order (the current
    directory when none is given); the first holds input/, output/, temp/ and user/ unless their
    own options say otherwise (relative ones are taken from the first base). Then
    ``extra_model_paths.yaml`` in the first base and each ``--extra-model-paths-config`` file are
    read, and ``--create-directories`` creates every folder.
    """
    bases: list[str] = []
    for base in (configuration.get("cwd"), configuration.get("base_directory"),
                 *(configuration.get("base_paths") or [])):
        if base and os.path.abspath(os.path.expanduser(base)) not in bases:
            bases.append(os.path.abspath(os.path.expanduser(base)))
    state = FolderPaths.for_bases(bases[0] if bases else os.getcwd(), bases[1:])
    for name in APPLICATION_DIRECTORIES:
        directory = configuration.get(f"{name}_directory")
        if directory:
            setattr(state, f"{name}_directory",
                    os.path.normpath(os.path.join(state.base_path, os.path.expanduser(directory))))
    extra_configs = list(configuration.get("extra_model_paths_config") or [])
    if os.path.isfile(os.path.join(state.base_path, EXTRA_MODEL_PATHS_FILE)):
        extra_configs.insert(0, os.path.join(state.base_path, EXTRA_MODEL_PATHS_FILE))
    for yaml_path in extra_configs:
        load_extra_path_config(yaml_path, state)
    if configuration.get("create_directories"):
        create_directories(state)
    set_state(state)
    return state


def load_extra_path_config(yaml_path: str, state: Optional[FolderPaths] = None) -> None:
    """Add the model folders of an ``extra_model_paths.yaml`` in ComfyUI's format.

    Each top-level section may set ``base_path`` (relative ones are taken from the file's folder)
    and ``is_default`` (search these folders first); every other key is a folder name whose value
    holds paths, one per line, relative to ``base_path`` or else to the file's folder.
    """
    import yaml

    state = state or get_state()
    with open(yaml_path, encoding="utf-8") as stream:
        document = yaml.safe_load(stream) or {}
    if not isinstance(document, dict):
        raise ValueError(f"{yaml_path}: expected sections of folder names, found {type(document).__name__}")
    yaml_dir = os.path.dirname(os.path.abspath(yaml_path))
    for section_name, section in document.items():
        if section is None:
            continue
        if not isinstance(section, dict):
            raise ValueError(f"{yaml_path}: section {section_name!r} must map folder names to paths")
        section = dict(section)
        base_path = section.pop("base_path", None)
        if base_path is not None:
            base_path = os.path.join(yaml_dir, os.path.expandvars(os.path.expanduser(str(base_path))))
        is_default = bool(section.pop("is_default", False))
        for folder_name, value in section.items():
            lines = value if isinstance(value, list) else str(value).split("\n")
            for line in (str(line).strip() for line in lines):
                if not line:
                    continue
                full_path = os.path.normpath(os.path.join(base_path or yaml_dir, line))
                logger.info("Adding extra search path %s %s", folder_name, full_path)
                state.add_model_folder_path(folder_name, full_path, is_default)


def create_directories(state: Optional[FolderPaths] = None) -> None:
    """Create every configured model folder and the input, output, temp and user directories."""
    state = state or get_state()
    for folders, _extensions in state.folder_names_and_paths.values():
        for folder in folders:
            os.makedirs(folder, exist_ok=True)
    for directory in state.directories().values():
        os.makedirs(directory, exist_ok=True)


# ComfyUI's folder_paths functions, acting on the current state.

def map_legacy(folder_name: str) -> str:
    return LEGACY_FOLDER_NAMES.get(folder_name, folder_name)


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    get_state().add_model_folder_path(folder_name, full_folder_path, is_default)


def get_folder_paths(folder_name: str) -> list[str]:
    return get_state().get_folder_paths(folder_name)


def get_full_path(folder_name: str, filename: str) -> Optional[str]:
    """The file a model name stands for: the first plugin to resolve it wins, local folders last."""
    from comfy.plugins import get_plugin_manager
    return get_plugin_manager().hook.comfyui_resolve_model(folder_name=map_legacy(folder_name), filename=filename)


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    full_path = get_full_path(folder_name, filename)
    if full_path is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return full_path


def get_filename_list(folder_name: str) -> list[str]:
    """Model files on disk plus the names plugins offer for the folder, deduplicated and sorted."""
    from comfy.plugins import get_plugin_manager
    folder_name = map_legacy(folder_name)
    names = set(get_state().local_filename_list(folder_name))
    for offered in get_plugin_manager().hook.comfyui_model_names(folder_name=folder_name):
        names.update(offered)
    return sorted(names)


def recursive_search(directory: str, excluded_dir_names: Optional[list[str]] = None) -> tuple[list[str], dict[str, float]]:
    """Files under ``directory`` relative to it, and the modification time of every directory seen."""
    if not os.path.isdir(directory):
        return [], {}
    excluded = set(excluded_dir_names or ())
    files: list[str] = []
    mtimes: dict[str, float] = {}
    visited: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:  # a symlink loop
            dirnames[:] = []
            continue
        visited.add(real)
        try:
            mtimes[dirpath] = os.path.getmtime(dirpath)
        except OSError:
            logger.warning("cannot read %s; skipping it", dirpath)
            dirnames[:] = []
            continue
        dirnames[:] = [name for name in dirnames if name not in excluded]
        files.extend(os.path.relpath(os.path.join(dirpath, name), directory) for name in filenames)
    return files, mtimes


def filter_files_extensions(files: Collection[str], extensions: Collection[str]) -> list[str]:
    """Files whose extension is in ``extensions`` (all files when it is empty), sorted."""
    return sorted(name for name in files if not extensions or os.path.splitext(name)[-1].lower() in extensions)


# Extensions mimetypes does not know, or guesses wrongly for our purposes.
extension_mimetypes_cache: dict[str, str] = {"webp": "image", "fbx": "model"}


def filter_files_content_types(files: Iterable[str], content_types: Collection[str]) -> list[str]:
    """Files whose MIME major type (image, video, audio, model) is one of ``content_types``."""
    result = []
    for name in files:
        extension = name.rsplit(".", 1)[-1]
        if extension not in extension_mimetypes_cache:
            mime_type, _ = mimetypes.guess_type(name, strict=False)
            if not mime_type:
                continue
            extension_mimetypes_cache[extension] = mime_type.split("/")[0]
        if extension_mimetypes_cache[extension] in content_types:
            result.append(name)
    return result


def get_input_directory() -> str:
    return get_state().input_directory


def get_output_directory() -> str:
    return get_state().output_directory


def get_temp_directory() -> str:
    return get_state().temp_directory


def get_user_directory() -> str:
    return get_state().user_directory


def set_input_directory(input_dir: str) -> None:
    get_state().input_directory = input_dir


def set_output_directory(output_dir: str) -> None:
    get_state().output_directory = output_dir


def set_temp_directory(temp_dir: str) -> None:
    get_state().temp_directory = temp_dir


def set_user_directory(user_dir: str) -> None:
    get_state().user_directory = user_dir


def get_directory_by_type(type_name: str) -> Optional[str]:
    """The input, output or temp directory by name; None for anything else (the server exposes these)."""
    if type_name in ("input", "output", "temp"):
        return get_state().directories()[type_name]
    return None


def get_system_user_directory(name: str = "system") -> str:
    """A user directory for internal data, prefixed so that HTTP user endpoints refuse it."""
    if not name or not isinstance(name, str):
        raise ValueError("System user name cannot be empty")
    if not name.replace("_", "").isalnum() or name.startswith("_"):
        raise ValueError(f"Invalid system user name: {name!r}")
    return os.path.join(get_user_directory(), f"{SYSTEM_USER_PREFIX}{name}")


def get_public_user_directory(user_id: str) -> Optional[str]:
    """A user's directory for HTTP endpoints; None for system users and empty ids."""
    if not user_id or not isinstance(user_id, str) or user_id.startswith(SYSTEM_USER_PREFIX):
        return None
    return os.path.join(get_user_directory(), user_id)


_ANNOTATIONS = ("output", "input", "temp")


def annotated_filepath(name: str) -> tuple[str, Optional[str]]:
    """Split ``"file.png [output]"`` into the name and the directory its annotation names."""
    for annotation in _ANNOTATIONS:
        suffix = f"[{annotation}]"
        if name.endswith(suffix):
            name = name[:-len(suffix)]
            # ComfyUI writes one space before the annotation.
            return name[:-1] if name.endswith(" ") else name, get_directory_by_type(annotation)
    return name, None


def get_annotated_filepath(name: str, default_dir: Optional[str] = None) -> str:
    name, base_dir = annotated_filepath(name)
    return os.path.join(base_dir or default_dir or get_input_directory(), name)


def exists_annotated_filepath(name: str) -> bool:
    name, base_dir = annotated_filepath(name)
    return os.path.exists(os.path.join(base_dir or get_input_directory(), name))


def _substitute_prefix_variables(prefix: str, image_width: int, image_height: int) -> str:
    now = time.localtime()
    values = {
        "%width%": str(image_width), "%height%": str(image_height), "%year%": str(now.tm_year),
        "%month%": f"{now.tm_mon:02d}", "%day%": f"{now.tm_mday:02d}", "%hour%": f"{now.tm_hour:02d}",
        "%minute%": f"{now.tm_min:02d}", "%second%": f"{now.tm_sec:02d}",
    }
    for variable, value in values.items():
        prefix = prefix.replace(variable, value)
    return prefix


def _counter_of(existing: str, filename: str) -> Optional[int]:
    """The counter in ``<filename>_<counter>_...`` or None when ``existing`` is not such a file."""
    head, rest = existing[:len(filename)], existing[len(filename):]
    if os.path.normcase(head) != os.path.normcase(filename) or not rest.startswith("_"):
        return None
    try:
        return int(rest[1:].split("_")[0])
    except ValueError:
        return None


def get_save_image_path(filename_prefix: str, output_dir: str, image_width: int = 0,
                        image_height: int = 0) -> SaveImagePath:
    """Where the next file for ``filename_prefix`` goes: ComfyUI's ``prefix_00001_.png`` numbering.

    The prefix may name subfolders and use %width%, %height%, %year%, %month%, %day%, %hour%,
    %minute% and %second%. The counter is one more than the highest among existing files.
    Raises OutputPathError when the prefix climbs out of ``output_dir``.
    """
    if "%" in filename_prefix:
        filename_prefix = _substitute_prefix_variables(filename_prefix, image_width, image_height)
    subfolder, filename = os.path.split(os.path.normpath(filename_prefix))
    output_dir = os.path.abspath(output_dir)
    full_output_folder = os.path.abspath(os.path.join(output_dir, subfolder))
    if os.path.commonpath((output_dir, full_output_folder)) != output_dir:
        raise OutputPathError(f"Saving outside the output folder is not allowed: {filename_prefix!r} resolves to "
                              f"{full_output_folder}, outside {output_dir}")
    try:
        existing = os.listdir(full_output_folder)
    except FileNotFoundError:
        os.makedirs(full_output_folder, exist_ok=True)
        existing = []
    counters = (_counter_of(name, filename) for name in existing)
    counter = max((value for value in counters if value is not None), default=0) + 1
    return SaveImagePath(full_output_folder, filename, counter, subfolder, filename_prefix)


# Vanilla nodes read these as module variables; they follow the current state.
_STATE_ATTRIBUTES = frozenset({"base_path", "models_dir", "folder_names_and_paths", "filename_list_cache",
                               "input_directory", "output_directory", "temp_directory", "user_directory"})


def __getattr__(name: str) -> Any:
    if name in _STATE_ATTRIBUTES:
        return getattr(get_state(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
