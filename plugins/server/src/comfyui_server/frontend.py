"""Where the frontend, the workflow templates and the node docs come from; nothing is downloaded."""
from __future__ import annotations

import importlib.metadata
import logging
import os
import re
from typing import Any, Optional

from comfyui_server.options import DEFAULT_FRONTEND_VERSION

logger = logging.getLogger(__name__)

FRONTEND_PACKAGE = "comfyui-frontend-package"
FRONTEND_REPOSITORY = "Comfy-Org/ComfyUI_frontend"
TEMPLATES_PACKAGE = "comfyui-workflow-templates"
# owner/repo@version, the version being "latest", "prerelease" or a (v-prefixed) semantic version.
_VERSION_PATTERN = re.compile(
    r"^([a-zA-Z0-9][a-zA-Z0-9-]{0,38})/([a-zA-Z0-9_.-]+)@(v?\d+\.\d+\.\d+[-._a-zA-Z0-9]*|latest|prerelease)$")


class FrontendError(Exception):
    """The configured frontend cannot be served; the message says what to do instead."""


def package_version(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def installed_frontend_root() -> str:
    try:
        import comfyui_frontend_package
    except ImportError:
        raise FrontendError(f"{FRONTEND_PACKAGE} is not installed: pip install {FRONTEND_PACKAGE}, "
                            f"or serve a frontend folder with --front-end-root") from None
    return os.path.join(os.path.dirname(os.path.abspath(comfyui_frontend_package.__file__)), "static")


def parse_version_string(value: str) -> tuple[str, str, str]:
    match = _VERSION_PATTERN.match(value)
    if match is None:
        raise FrontendError(f"--front-end-version {value!r} is not of the form owner/repo@version "
                            f"(version: latest, prerelease or a number like 1.2.3)")
    return match.group(1), match.group(2), match.group(3)


def resolve_web_root(front_end_root: Optional[str], front_end_version: Optional[str], base_path: str) -> str:
    """The folder to serve at ``/``.

    ``--front-end-root`` wins; then the installed package when ``--front-end-version`` is the
    default or names the installed version; then a copy unpacked earlier under
    ``<base>/web_custom_versions/<owner>_<repo>/<version>``. Anything else would need a download.
    """
    if front_end_root:
        root = os.path.abspath(os.path.expanduser(front_end_root))
        if not os.path.isfile(os.path.join(root, "index.html")):
            raise FrontendError(f"--front-end-root {root} has no index.html")
        return root
    version_string = front_end_version or DEFAULT_FRONTEND_VERSION
    if version_string == DEFAULT_FRONTEND_VERSION:
        return installed_frontend_root()
    owner, repo, version = parse_version_string(version_string)
    installed = package_version(FRONTEND_PACKAGE)
    if f"{owner}/{repo}".lower() == FRONTEND_REPOSITORY.lower() and installed and version.lstrip("v") == installed:
        return installed_frontend_root()
    unpacked = os.path.join(base_path, "web_custom_versions", f"{owner}_{repo}", version.lstrip("v"))
    if os.path.isfile(os.path.join(unpacked, "index.html")):
        return unpacked
    raise FrontendError(
        f"--front-end-version {version_string} would need a download, and this server works offline. "
        f"Installed: {FRONTEND_PACKAGE} {installed or '(none)'}. Install the version you want "
        f"(pip install {FRONTEND_PACKAGE}=={version.lstrip('v')}), unpack it into {unpacked}, "
        f"or point --front-end-root at a built frontend.")


class TemplateFiles:
    """The files of comfyui-workflow-templates by the name the frontend asks for (``index.json``,
    ``<template>.json``, ``<template>-1.webp``, ``logo/<provider>.png``...).

    Newer releases split into a manifest package, a JSON package and media bundles that may be
    installed or not; a file is looked up only when asked for, so a missing bundle costs one 404.
    Older releases ship a single ``templates/`` folder.
    """

    def __init__(self, module: Any):
        self.module = module
        self.owner: dict[str, str] = {}
        self.folder: Optional[str] = None
        iter_templates = getattr(module, "iter_templates", None)
        if iter_templates is not None and hasattr(module, "get_asset_path"):
            for entry in iter_templates():
                for asset in entry.assets:
                    self.owner[asset.filename] = entry.template_id
        else:
            folder = os.path.join(os.path.dirname(os.path.abspath(module.__file__)), "templates")
            self.folder = folder if os.path.isdir(folder) else None

    def path(self, name: str) -> Optional[str]:
        """The file's absolute path, or None when no installed package has it."""
        if self.folder is not None:
            from comfyui_server.files import PathOutsideRoot, contained_path
            try:
                path = contained_path(self.folder, name)
            except PathOutsideRoot:
                return None
            return path if os.path.isfile(path) else None
        template_id = self.owner.get(name)
        if template_id is None:
            return None
        try:
            return str(self.module.get_asset_path(template_id, name))
        except (FileNotFoundError, KeyError):
            return None


def template_files() -> Optional[TemplateFiles]:
    """The installed workflow templates, or None when comfyui-workflow-templates is not installed."""
    try:
        import comfyui_workflow_templates
    except ImportError:
        return None
    return TemplateFiles(comfyui_workflow_templates)


def embedded_docs_root() -> Optional[str]:
    try:
        import comfyui_embedded_docs
    except ImportError:
        return None
    folder = os.path.join(os.path.dirname(os.path.abspath(comfyui_embedded_docs.__file__)), "docs")
    return folder if os.path.isdir(folder) else None


__all__ = ["FrontendError", "TemplateFiles", "embedded_docs_root", "installed_frontend_root", "package_version",
           "parse_version_string", "resolve_web_root", "template_files"]
