"""What custom node packages add to the frontend: scripts, translations, subgraph blueprints, example workflows.

``/extensions`` lists the frontend's own extension scripts and each package's ``WEB_DIRECTORY``
scripts (served under ``/extensions/<package>/``); ``/i18n`` merges the packages' ``locales/``;
``/global_subgraphs`` lists their ``subgraphs/*.json``; ``/workflow_templates`` their example workflows.
"""
from __future__ import annotations

import asyncio
import glob
import hashlib
import json
import logging
import os
from typing import TYPE_CHECKING, Any, Optional, TypedDict
from urllib.parse import quote

from aiohttp import web

from comfyui_server.files import PathOutsideRoot, contained_path

if TYPE_CHECKING:
    from comfyui_server.server import PromptServer

logger = logging.getLogger(__name__)

EXAMPLE_WORKFLOW_FOLDERS = ("example_workflows", "example", "examples", "workflow", "workflows")
# Besides main.json, these files of a locale folder land under their own key.
LOCALE_FILES = ("nodeDefs.json", "commands.json", "settings.json")


class SubgraphInfo(TypedDict):
    node_pack: str


class SubgraphEntry(TypedDict, total=False):
    source: str
    name: str
    info: SubgraphInfo
    data: str


def custom_node_packages() -> list[str]:
    """Every package folder in the configured custom_nodes folders, sorted within each folder."""
    from comfy import paths

    packages = []
    for folder in paths.get_folder_paths("custom_nodes"):
        if os.path.isdir(folder):
            packages.extend(sorted(path for path in glob.glob(os.path.join(glob.escape(folder), "*"))
                                   if os.path.isdir(path)))
    return packages


def extension_scripts(web_root: Optional[str], web_directories: dict[str, str]) -> list[str]:
    scripts = []
    if web_root:
        core = os.path.join(web_root, "extensions")
        scripts.extend("/" + os.path.relpath(path, web_root).replace(os.sep, "/")
                       for path in sorted(glob.glob(os.path.join(glob.escape(core), "**", "*.js"), recursive=True)))
    for name, directory in web_directories.items():
        scripts.extend(f"/extensions/{quote(name)}/" + os.path.relpath(path, directory).replace(os.sep, "/")
                       for path in sorted(glob.glob(os.path.join(glob.escape(directory), "**", "*.js"),
                                                    recursive=True)))
    return scripts


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as stream:
            value = json.load(stream)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        logger.error("skipping translation file %s: %s", path, error)
        return {}
    return value if isinstance(value, dict) else {}


def merge(into: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """``other`` merged into a copy of ``into``, objects merged key by key, anything else replaced."""
    merged = dict(into)
    for key, value in other.items():
        merged[key] = merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key),
                                                                                           dict) else value
    return merged


def translations() -> dict[str, Any]:
    found: dict[str, Any] = {}
    for package in custom_node_packages():
        for language_dir in sorted(glob.glob(os.path.join(glob.escape(package), "locales", "*"))):
            if not os.path.isdir(language_dir):
                continue
            entries = _read_json(os.path.join(language_dir, "main.json"))
            for name in LOCALE_FILES:
                extra = _read_json(os.path.join(language_dir, name))
                if extra:
                    entries[name.split(".")[0]] = extra
            if entries:
                language = os.path.basename(language_dir)
                found[language] = merge(found.get(language, {}), entries)
    return found


def subgraph_files() -> dict[str, tuple[str, SubgraphEntry]]:
    """Subgraph id -> (file, entry) for each package's ``subgraphs/*.json``."""
    found = {}
    for package in custom_node_packages():
        for path in sorted(glob.glob(os.path.join(glob.escape(package), "subgraphs", "*.json"))):
            normalized = path.replace("\\", "/")
            entry_id = hashlib.sha256(f"custom_node{normalized}".encode()).hexdigest()
            found[entry_id] = (path, {"source": "custom_node",
                                      "name": os.path.splitext(os.path.basename(path))[0],
                                      "info": {"node_pack": "custom_nodes." + os.path.basename(package)}})
    return found


def example_workflows() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for package in custom_node_packages():
        for folder in EXAMPLE_WORKFLOW_FOLDERS:
            for path in sorted(glob.glob(os.path.join(glob.escape(package), folder, "*.json"))):
                found.setdefault(os.path.basename(package), []).append(os.path.splitext(os.path.basename(path))[0])
    return found


def example_file(package_name: str, filename: str) -> Optional[str]:
    """A file of a package's example workflow folders, or None."""
    for package in custom_node_packages():
        if os.path.basename(package) != package_name:
            continue
        for folder in EXAMPLE_WORKFLOW_FOLDERS:
            try:
                path = contained_path(os.path.join(package, folder), filename)
            except PathOutsideRoot:
                return None
            if os.path.isfile(path):
                return path
    return None


def add_routes(routes: web.RouteTableDef, server: "PromptServer") -> None:
    @routes.get("/extensions")
    async def get_extensions(request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(extension_scripts, server.web_root,
                                                         server.runtime.registry.web_directories))

    @routes.get("/i18n")
    async def get_i18n(request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(translations))

    @routes.get("/global_subgraphs")
    async def get_global_subgraphs(request: web.Request) -> web.Response:
        found = await asyncio.to_thread(subgraph_files)
        return web.json_response({entry_id: entry for entry_id, (_path, entry) in found.items()})

    @routes.get("/global_subgraphs/{id}")
    async def get_global_subgraph(request: web.Request) -> web.Response:
        found = (await asyncio.to_thread(subgraph_files)).get(request.match_info["id"])
        if found is None:
            return web.json_response(None, status=404)
        path, entry = found
        with open(path, encoding="utf-8") as stream:
            return web.json_response({**entry, "data": stream.read()})

    @routes.get("/workflow_templates")
    async def get_workflow_templates(request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(example_workflows))

    @routes.get("/workflow_templates/{package}/{filename:.+}")
    async def get_workflow_template(request: web.Request) -> web.StreamResponse:
        path = example_file(request.match_info["package"], request.match_info["filename"])
        if path is None:
            return web.Response(status=404)
        return web.FileResponse(path)


__all__ = ["add_routes", "example_workflows", "extension_scripts", "merge", "subgraph_files", "translations"]
