"""Users and their files: who a request is from, and where that user's settings and data live.

Single-user servers have one user, ``default``. With ``--multi-user`` the ``Comfy-User`` header
names the user, who must be listed in ``<user dir>/users.json``. Each user's files live under
``<user dir>/<user id>/`` and no path may leave it.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
import uuid
from typing import Optional, TypedDict

from aiohttp import web

from comfyui_server.files import PathOutsideRoot, atomic_write_bytes, contained_path

logger = logging.getLogger(__name__)

DEFAULT_USER = "default"
SETTINGS_FILE = "comfy.settings.json"
# Ids with this prefix are the kernel's internal users; HTTP never reaches them.
SYSTEM_USER_PREFIX = "__"


class UnknownUser(KeyError):
    """The request names a user this server does not have."""


class FileInfo(TypedDict):
    path: str
    size: int
    modified: float
    created: float


def file_info(path: str, relative_to: str) -> FileInfo:
    stat = os.stat(path)
    return {"path": os.path.relpath(path, relative_to).replace(os.sep, "/"), "size": stat.st_size,
            "modified": stat.st_mtime, "created": stat.st_ctime}


def user_directory() -> str:
    from comfy import paths
    return paths.get_user_directory()


class UserManager:
    """Users of this server and the paths of their files."""

    def __init__(self, multi_user: bool = False):
        self.multi_user = multi_user
        self._lock = threading.Lock()
        if multi_user:
            try:
                with open(self.users_file, encoding="utf-8") as stream:
                    self.users: dict[str, str] = dict(json.load(stream))
            except FileNotFoundError:
                self.users = {}
        else:
            self.users = {DEFAULT_USER: DEFAULT_USER}

    @property
    def users_file(self) -> str:
        return os.path.join(user_directory(), "users.json")

    def user_id(self, request: web.Request) -> str:
        user = DEFAULT_USER
        if self.multi_user and request.headers.get("Comfy-User"):
            user = request.headers["Comfy-User"]
        # The same message for system ids as for unknown ones, so that they cannot be probed.
        if user.startswith(SYSTEM_USER_PREFIX) or user not in self.users:
            raise UnknownUser(f"Unknown user: {user}")
        return user

    def user_root(self, request: web.Request) -> str:
        root = user_directory()
        return contained_path(root, self.user_id(request))

    def user_path(self, request: web.Request, relative: Optional[str]) -> str:
        """A path inside the requesting user's folder; ``PathOutsideRoot`` if it would leave it."""
        root = self.user_root(request)
        if not relative:
            return root
        return contained_path(root, relative)

    def add_user(self, name: str) -> str:
        name = name.strip()
        if not name:
            raise ValueError("username not provided")
        if name.startswith(SYSTEM_USER_PREFIX):
            raise ValueError("System User prefix not allowed")
        slug = re.sub(r"[^a-zA-Z0-9_-]+", "-", name)
        if slug.startswith(SYSTEM_USER_PREFIX):
            raise ValueError("System User prefix not allowed")
        with self._lock:
            if name in self.users.values():
                raise ValueError("Duplicate username.")
            user_id = f"{slug}_{uuid.uuid4()}"
            self.users[user_id] = name
            atomic_write_bytes(self.users_file, json.dumps(self.users).encode())
        return user_id

    # -- ComfyUI's UserManager methods, which custom nodes call ----------------------------------------

    def get_request_user_id(self, request: web.Request) -> str:
        return self.user_id(request)

    def get_request_user_filepath(self, request: web.Request, file: Optional[str], type: str = "userdata",
                                  create_dir: bool = True) -> Optional[str]:
        """The path of ``file`` in the requesting user's folder; None if it would leave it."""
        if type != "userdata":
            raise KeyError(f"Unknown filepath type: {type}")
        try:
            path = self.user_path(request, file)
        except PathOutsideRoot:
            return None
        if create_dir:
            os.makedirs(os.path.dirname(path) if file else path, exist_ok=True)
        return path

    # -- settings ---------------------------------------------------------------------------------------

    def settings_path(self, request: web.Request) -> str:
        return os.path.join(self.user_root(request), SETTINGS_FILE)

    def read_settings(self, request: web.Request) -> dict:
        """The user's settings; a missing or unreadable file is no settings (and is logged)."""
        path = self.settings_path(request)
        try:
            with open(path, encoding="utf-8") as stream:
                settings = json.load(stream)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            logger.error("The user settings file %s is unreadable (%s); using none", path,
                         error)
            return {}
        return settings if isinstance(settings, dict) else {}

    def write_settings(self, request: web.Request, settings: dict) -> None:
        atomic_write_bytes(self.settings_path(request), json.dumps(settings, indent=4).encode())


__all__ = ["DEFAULT_USER", "FileInfo", "PathOutsideRoot", "SETTINGS_FILE", "UnknownUser", "UserManager",
           "file_info"]
