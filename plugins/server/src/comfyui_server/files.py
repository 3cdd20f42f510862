"""Paths a client names, checked to stay inside their root, and files written atomically."""
from __future__ import annotations

import os
import uuid
from typing import Iterable, Optional


class PathOutsideRoot(ValueError):
    """A client-supplied path would leave the folder it must stay in (``..``, absolute, a symlink out)."""


def contained_path(root: str, *parts: str) -> str:
    """``root`` joined with ``parts``, refusing any result outside ``root``.

    Absolute parts, drive letters, ``..`` that climbs out and symlinks that resolve outside all raise
    ``PathOutsideRoot``. The returned path is absolute but not resolved, so it names what the
    client asked for; it need not exist.
    """
    root = os.path.abspath(root)
    pieces = []
    for part in parts:
        if not part:
            continue
        if "\x00" in part:
            raise PathOutsideRoot(f"{part!r} contains a NUL byte")
        part = part.replace("\\", "/") if os.sep == "/" else part
        if os.path.isabs(part) or os.path.splitdrive(part)[0]:
            raise PathOutsideRoot(f"{part!r} is an absolute path")
        pieces.append(part)
    candidate = os.path.abspath(os.path.join(root, *pieces))
    if not _inside(candidate, root):
        raise PathOutsideRoot(f"{os.path.join(*pieces) if pieces else ''!r} leaves its folder")
    # Symlinks may point anywhere; what they resolve to must stay inside the resolved root too.
    if not _inside(os.path.realpath(candidate), os.path.realpath(root)):
        raise PathOutsideRoot(f"{os.path.join(*pieces)!r} resolves outside its folder")
    return candidate


def _inside(path: str, root: str) -> bool:
    try:
        return os.path.commonpath((path, root)) == root
    except ValueError:  # different drives on Windows
        return False


def atomic_write(path: str, chunks: Iterable[bytes]) -> int:
    """Write ``chunks`` to a temporary file beside ``path``, then rename it over ``path``.

    Readers see the old file or the whole new one, never a part; if writing fails the old file is
    untouched and the temporary file is removed. Returns the number of bytes written.
    """
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.part")
    # os.open rather than mkstemp: the file gets the permissions of any other file (umask), not 0600.
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    written = 0
    try:
        with os.fdopen(handle, "wb") as stream:
            for chunk in chunks:
                stream.write(chunk)
                written += len(chunk)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    return written


def atomic_write_bytes(path: str, data: bytes) -> int:
    return atomic_write(path, (data,))


def file_sha256(path: str) -> Optional[str]:
    """The hex SHA-256 of a file, or None when it cannot be read."""
    import hashlib

    digest = hashlib.sha256()
    try:
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


__all__ = ["PathOutsideRoot", "atomic_write", "atomic_write_bytes", "contained_path", "file_sha256"]
