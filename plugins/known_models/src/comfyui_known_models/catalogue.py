"""The catalogue of known models: ``known_models.yaml`` plus what plugins register through the hook."""
from __future__ import annotations

import posixpath
import re
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import pluggy

from comfy import paths
from comfy.plugins import PluginConflictError, collect, get_plugin_manager

from comfyui_known_models import hookspecs

CATALOGUE_FILE = "known_models.yaml"
# Entries in this folder are whole Hugging Face repositories, resolved to snapshot folders.
HUGGINGFACE_FOLDER = "huggingface"
HOOK_NAME = "comfyui_register_known_models"
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def is_repo_id(name: str) -> bool:
    """Whether ``name`` reads as a Hugging Face repository id (``owner/name``)."""
    return bool(_REPO_ID.match(name)) and ".." not in name


def normalize_name(name: str) -> str:
    """A model name as the catalogue keys it: workflows saved on Windows spell subfolders with backslashes."""
    return name.replace("\\", "/")


@dataclass(frozen=True)
class KnownModel:
    """One file (or, in folder ``huggingface``, one repository) and where it is published."""
    folder_name: str
    filename: str
    repo_id: Optional[str] = None
    path_in_repo: Optional[str] = None
    revision: str = "main"
    repo_type: str = "model"
    civitai_version_id: Optional[int] = None
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.repo_id is None) == (self.civitai_version_id is None):
            raise ValueError(f"known model {self.folder_name}/{self.filename}: give either repo_id or "
                             f"civitai_version_id")
        if self.repo_id is not None and not is_repo_id(self.repo_id):
            raise ValueError(f"known model {self.folder_name}/{self.filename}: {self.repo_id!r} is not a "
                             f"Hugging Face repository id (owner/name)")
        relative = posixpath.normpath(normalize_name(self.filename))
        if relative.startswith(("/", "../")) or relative in ("..", "."):
            raise ValueError(f"known model {self.folder_name}/{self.filename}: the name must stay inside its folder")
        object.__setattr__(self, "folder_name", paths.map_legacy(self.folder_name))
        object.__setattr__(self, "filename", relative)
        object.__setattr__(self, "aliases", tuple(normalize_name(alias) for alias in self.aliases))

    @property
    def names(self) -> tuple[str, ...]:
        return (self.filename, *self.aliases)

    @property
    def repo_path(self) -> str:
        """The file's path in its Hugging Face repository."""
        return self.path_in_repo or self.filename


class Catalogue:
    """Known models by folder and name, with the plugin that registered each."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str], KnownModel] = {}
        self._sources: dict[tuple[str, str], str] = {}

    def add(self, source: str, folder_name: str, filename: str, **fields: Any) -> None:
        """The ``register`` callback: one model, refused when its folder already has one of its names."""
        model = KnownModel(folder_name, filename, **fields)
        keys = [(model.folder_name, name) for name in model.names]
        for key in keys:
            if key in self._models:
                raise PluginConflictError(f"known model {key[0]}/{key[1]} is registered twice: by "
                                          f"{self._sources[key]} and by {source}")
        for key in keys:
            self._models[key] = model
            self._sources[key] = source

    def find(self, folder_name: str, filename: str) -> Optional[KnownModel]:
        return self._models.get((paths.map_legacy(folder_name), normalize_name(filename)))

    def names(self, folder_name: str) -> list[str]:
        """The names a folder's choice lists offer: each model once, by its main name (aliases still
        resolve, but a loader's choice list validates only the names it shows)."""
        folder_name = paths.map_legacy(folder_name)
        return sorted({model.filename for (folder, _), model in self._models.items()
                       if folder == folder_name})

    def __iter__(self) -> Iterator[KnownModel]:
        return iter(dict.fromkeys(self._models.values()))

    def __len__(self) -> int:
        return len(dict.fromkeys(self._models.values()))


def read_catalogue_file(register: Callable[..., None], text: Optional[str] = None) -> None:
    """Register every entry of ``known_models.yaml`` (or of ``text`` in its format)."""
    import yaml

    if text is None:
        from importlib import resources
        text = resources.files(__package__).joinpath(CATALOGUE_FILE).read_text(encoding="utf-8")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    document = yaml.load(text, Loader=loader) or {}
    for folder_name, entries in document.items():
        for entry in entries:
            entry = dict(entry)
            repo_id = entry.pop("repo", None)
            path_in_repo = entry.pop("path", None)
            default_name = repo_id if folder_name == HUGGINGFACE_FOLDER else posixpath.basename(path_in_repo or "")
            name = entry.pop("name", None) or default_name
            fields = {"repo_id": repo_id, "path_in_repo": path_in_repo if path_in_repo != name else None,
                      "civitai_version_id": entry.pop("civitai", None),
                      "aliases": tuple(entry.pop("aliases", ())), **entry}
            register(folder_name, name, **fields)


_lock = threading.Lock()
# Per plugin manager: the hook implementations the catalogue was built from, and the catalogue.
_built: "weakref.WeakKeyDictionary[pluggy.PluginManager, tuple[tuple[Any, ...], Catalogue]]" = \
    weakref.WeakKeyDictionary()


def add_hookspecs(pm: pluggy.PluginManager) -> None:
    """Give ``pm`` this plugin's hook spec, once; implementations registered earlier are checked then."""
    caller = getattr(pm.hook, HOOK_NAME, None)
    if caller is None or caller.spec is None:
        pm.add_hookspecs(hookspecs)


def get_catalogue(pm: Optional[pluggy.PluginManager] = None) -> Catalogue:
    """The catalogue of ``pm`` (the process-wide plugin manager by default), rebuilt when its plugins change."""
    pm = pm or get_plugin_manager()
    with _lock:
        add_hookspecs(pm)
        implementations = tuple((impl.plugin_name, impl.function)
                                for impl in getattr(pm.hook, HOOK_NAME).get_hookimpls())
        built = _built.get(pm)
        if built is not None and built[0] == implementations:
            return built[1]
        catalogue = Catalogue()
        collect(pm, HOOK_NAME, catalogue.add)
        _built[pm] = (implementations, catalogue)
        return catalogue
