"""Fetching known models: Hugging Face files and repositories through huggingface_hub, CivitAI files over
HTTP; each checked against the hub's checksum, put in place only when whole, and fetched once at a time."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from typing import TYPE_CHECKING, Any, Iterator, Optional

from comfy import paths
from comfy.execution_context import InterruptProcessingException, current_execution
from comfy.progress import ProgressBar

from comfyui_known_models.catalogue import HUGGINGFACE_FOLDER, KnownModel, is_repo_id
from comfyui_known_models.errors import GatedModelError, ModelIntegrityError, ModelUnavailableError

if TYPE_CHECKING:
    from huggingface_hub.utils import httpx

logger = logging.getLogger(__name__)

HUGGINGFACE_CACHE_FOLDER = "huggingface_cache"
CIVITAI_ENDPOINT_VARIABLE = "CIVITAI_ENDPOINT"
CIVITAI_TOKEN_VARIABLE = "CIVITAI_API_TOKEN"
DEFAULT_CIVITAI_ENDPOINT = "https://civitai.com"
# Downloads in local-dir mode are written here first and moved into place once whole and verified.
STAGING_FOLDER = ".incomplete"
LOCKS_FOLDER = ".locks"
PARTIAL_SUFFIX = ".part"

_CHUNK_SIZE = 1 << 20
_ATTEMPTS = 3
_TIMEOUT_S = 30.0
# The progress bars whose bytes reach the client: huggingface_hub's per-file and snapshot bars
# (its snapshot "transfer" bar would count the same bytes twice) and our CivitAI bar.
_REPORTED_BARS = frozenset({"huggingface_hub.http_get", "huggingface_hub.xet_get",
                            "huggingface_hub.snapshot_download", "comfyui_known_models.civitai"})
_DIGESTS = {64: "sha256", 40: "git-sha1"}  # a hub checksum's algorithm, by its length in hex digits


def hf_endpoint() -> str:
    """The Hugging Face endpoint: ``HF_ENDPOINT`` as set now, not only when huggingface_hub was imported."""
    from huggingface_hub import constants
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hf_cache_dir() -> str:
    """huggingface_hub's cache, shared with other tools (``HF_HUB_CACHE``, read now)."""
    from huggingface_hub import constants
    return os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE


def civitai_endpoint() -> str:
    """CivitAI's address; ``CIVITAI_ENDPOINT`` points it at a mirror (or a test server)."""
    return (os.environ.get(CIVITAI_ENDPOINT_VARIABLE) or DEFAULT_CIVITAI_ENDPOINT).rstrip("/")


def model_folders(folder_name: str) -> list[str]:
    """The folder's configured paths; ``models/<folder_name>`` under each base for folders the kernel
    does not configure (``huggingface``, ``huggingface_cache``) unless ``extra_model_paths.yaml`` adds them."""
    state = paths.get_state()
    if folder_name in state.folder_names_and_paths:
        return state.get_folder_paths(folder_name)
    return [os.path.join(base, "models", folder_name) for base in (state.base_path, *state.extra_base_paths)]


def destination_path(model: KnownModel) -> str:
    """Where ``model`` goes: its name under the folder's first path (the default one)."""
    try:
        folder = paths.get_folder_paths(model.folder_name)[0]
    except KeyError:
        raise ValueError(f"known model {model.folder_name}/{model.filename}: there is no model folder "
                         f"{model.folder_name!r}; a plugin that registers models for a folder of its own "
                         f"must add it with comfy.paths.add_model_folder_path") from None
    return os.path.join(folder, *model.filename.split("/"))


def source_url(model: KnownModel) -> str:
    """Where a person can download the file by hand."""
    if model.civitai_version_id is not None:
        return f"{civitai_endpoint()}/api/download/models/{model.civitai_version_id}"
    from huggingface_hub import hf_hub_url
    return hf_hub_url(model.repo_id, model.repo_path, repo_type=model.repo_type, revision=model.revision,
                      endpoint=hf_endpoint())


def fetch(model: KnownModel, *, local_dir_mode: bool = False) -> str:
    """Download ``model`` into its folder unless it is there already, and return its path.

    Hugging Face files go to huggingface_hub's cache and are linked into the model folder, or with
    ``local_dir_mode`` are moved there as plain files. One caller downloads while others wait for it.
    """
    destination = destination_path(model)
    with _file_lock(os.path.join(os.path.dirname(destination), LOCKS_FOLDER), os.path.basename(destination)):
        # Whoever held the lock before us may have put it in place.
        existing = paths.get_state().local_full_path(model.folder_name, model.filename)
        if existing is not None:
            return existing
        progress = ProgressBar(1)
        if model.civitai_version_id is not None:
            _fetch_civitai(model, destination, progress)
        elif local_dir_mode:
            staging = os.path.join(model_folders(HUGGINGFACE_FOLDER)[0], STAGING_FOLDER, *model.repo_id.split("/"))
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            os.replace(_fetch_huggingface_file(model, progress, local_dir=staging), destination)
        else:
            _link(_fetch_huggingface_file(model, progress), destination)
        logger.info("%s is ready at %s", model.filename, destination)
    return destination


def snapshot(repo_id: str, revision: str = "main", *, local_dir_mode: bool = False,
             download: bool = True) -> Optional[str]:
    """A local folder holding the Hugging Face repository ``repo_id``, downloaded if needed and allowed.

    A folder ``models/huggingface/<owner>/<name>`` is used as it is; then huggingface_hub's caches
    (its own and ``models/huggingface_cache``) are searched; then, if ``download``, the repository is
    downloaded into the cache, or with ``local_dir_mode`` into ``models/huggingface/<owner>/<name>``.
    Returns None when it is nowhere and may not be downloaded.
    """
    from huggingface_hub import snapshot_download

    if not is_repo_id(repo_id):
        raise ValueError(f"{repo_id!r} is not a Hugging Face repository id (owner/name)")
    found = _local_snapshot(repo_id, revision)
    if found is not None or not download:
        return found

    hf_folder = model_folders(HUGGINGFACE_FOLDER)[0]
    final = os.path.join(hf_folder, *repo_id.split("/"))
    page = f"{hf_endpoint()}/{repo_id}"
    progress = ProgressBar(1)
    with _file_lock(os.path.join(hf_folder, LOCKS_FOLDER), repo_id.replace("/", "--")):
        # Whoever held the lock before us may have downloaded it.
        found = _local_snapshot(repo_id, revision)
        if found is not None:
            return found
        target: dict[str, str] = {"cache_dir": hf_cache_dir()}
        if local_dir_mode:
            target = {"local_dir": os.path.join(hf_folder, STAGING_FOLDER, *repo_id.split("/"))}
        logger.info("Downloading the repository %s from %s", repo_id, page)
        with _hub_errors(repo_id, page, final):
            path = snapshot_download(repo_id, revision=revision, endpoint=hf_endpoint(),
                                     tqdm_class=_reporting_tqdm(progress), **target)
            _verify_snapshot(repo_id, path, revision, page, target)
        if not local_dir_mode:
            return path
        os.makedirs(os.path.dirname(final), exist_ok=True)
        os.replace(path, final)
        return final


def local_repos() -> list[str]:
    """Repository ids with a folder under ``models/huggingface``."""
    found = set()
    for folder in model_folders(HUGGINGFACE_FOLDER):
        if not os.path.isdir(folder):
            continue
        for owner in os.scandir(folder):
            if owner.is_dir() and not owner.name.startswith("."):
                found.update(f"{owner.name}/{repo.name}" for repo in os.scandir(owner.path) if repo.is_dir())
    return sorted(found)


def _local_snapshot(repo_id: str, revision: str) -> Optional[str]:
    """The repository's folder under ``models/huggingface``, else a complete snapshot in a cache, else None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    for folder in model_folders(HUGGINGFACE_FOLDER):
        candidate = os.path.join(folder, *repo_id.split("/"))
        if os.path.isdir(candidate) and os.listdir(candidate):
            return candidate
    for cache_dir in _cache_dirs():
        # huggingface_hub refuses a snapshot that its cached file listing shows to be incomplete.
        with contextlib.suppress(LocalEntryNotFoundError):
            return snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True)
    return None


def _cache_dirs() -> list[str]:
    return list(dict.fromkeys([hf_cache_dir(), *model_folders(HUGGINGFACE_CACHE_FOLDER)]))


@contextlib.contextmanager
def _file_lock(lock_dir: str, name: str) -> Iterator[None]:
    """Hold ``<lock_dir>/<name>.lock``: one holder at a time across threads and processes."""
    from filelock import FileLock

    os.makedirs(lock_dir, exist_ok=True)
    with FileLock(os.path.join(lock_dir, f"{name}.lock")):
        yield


def _fetch_huggingface_file(model: KnownModel, progress: ProgressBar, local_dir: Optional[str] = None) -> str:
    """A verified local copy of a Hugging Face file: from a cache when there, else downloaded."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, try_to_load_from_cache

    if local_dir is None:
        for cache_dir in _cache_dirs():
            cached = try_to_load_from_cache(model.repo_id, model.repo_path, cache_dir=cache_dir,
                                            revision=model.revision, repo_type=model.repo_type)
            if isinstance(cached, str):
                return cached
        target = {"cache_dir": hf_cache_dir()}
    else:
        target = {"local_dir": local_dir}
    url = source_url(model)
    endpoint = hf_endpoint()
    with _hub_errors(model.filename, url, os.path.dirname(destination_path(model)), model.repo_id):
        metadata = get_hf_file_metadata(url, endpoint=endpoint)
        logger.info("Downloading %s from %s", model.filename, url)
        # The commit the checksum was read from, so that a push in between cannot mix versions.
        path = hf_hub_download(model.repo_id, model.repo_path, repo_type=model.repo_type,
                               revision=metadata.commit_hash or model.revision, endpoint=endpoint,
                               tqdm_class=_reporting_tqdm(progress), **target)
    actual = _mismatch(path, metadata.etag)
    if actual is not None:
        _discard(path)
        raise ModelIntegrityError(
            f"The download of {model.filename} from {url} does not match the checksum the hub reports "
            f"(expected {metadata.etag}, got {actual}), so it was deleted. Try again; if it keeps failing, "
            f"download it by hand and put it in {os.path.dirname(destination_path(model))}.",
            filename=model.filename, url=url)
    return path


def _verify_snapshot(repo_id: str, path: str, revision: str, page: str, target: dict[str, str]) -> None:
    from huggingface_hub import HfApi

    # In the cache a snapshot folder is named by its commit; a local folder is checked against the revision.
    commit = os.path.basename(path) if "cache_dir" in target else revision
    verification = HfApi(endpoint=hf_endpoint()).verify_repo_checksums(repo_id, revision=commit, **target)
    if not verification.mismatches:
        return
    names = [mismatch["path"] for mismatch in verification.mismatches]
    for name in names:
        _discard(os.path.join(path, *name.split("/")))
    raise ModelIntegrityError(f"Files of {repo_id} do not match the checksums the hub reports "
                              f"({', '.join(names)}), so they were deleted. Try again.", filename=repo_id, url=page)


@contextlib.contextmanager
def _hub_errors(filename: str, url: str, folder: str, repo_id: Optional[str] = None) -> Iterator[None]:
    """Turn huggingface_hub's failures into errors that say what to do."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    page = f"{hf_endpoint()}/{repo_id or filename}"
    try:
        yield
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status in (401, 403):
            raise GatedModelError(
                f"Cannot download {filename}: {page} refused access (HTTP {status}); the model is gated or "
                f"private. Log in with `huggingface-cli login` (or set HF_TOKEN) and accept the terms at {page}.",
                filename=filename, url=url) from error
        raise ModelUnavailableError(_by_hand(filename, url, folder, f"the hub answered HTTP {status}"),
                                    filename=filename, url=url) from error
    except (*_network_errors(), LocalEntryNotFoundError) as error:
        raise ModelUnavailableError(_by_hand(filename, url, folder, f"the hub cannot be reached ({error})"),
                                    filename=filename, url=url) from error


def _network_errors() -> tuple[type[Exception], ...]:
    """What huggingface_hub's HTTP client raises when the network fails (or HF_HUB_OFFLINE forbids it)."""
    from huggingface_hub.errors import OfflineModeIsEnabled
    from huggingface_hub.utils import httpx
    return httpx.TransportError, OfflineModeIsEnabled


def _by_hand(filename: str, url: str, folder: str, reason: str) -> str:
    return f"Cannot download {filename}: {reason}. Download it by hand from {url} and put it in {folder}."


def _fetch_civitai(model: KnownModel, destination: str, progress: ProgressBar) -> None:
    """Download a CivitAI model version's file beside ``destination``, verify it, then move it there."""
    from huggingface_hub.utils import get_session

    base = civitai_endpoint()
    url = source_url(model)
    folder = os.path.dirname(destination)
    headers = {"Authorization": f"Bearer {os.environ[CIVITAI_TOKEN_VARIABLE]}"} \
        if os.environ.get(CIVITAI_TOKEN_VARIABLE) else {}
    page = url  # until the version's metadata names its model page
    try:
        response = get_session().get(f"{base}/api/v1/model-versions/{model.civitai_version_id}", headers=headers,
                                     timeout=_TIMEOUT_S)
    except _network_errors() as error:
        raise ModelUnavailableError(_by_hand(model.filename, url, folder, f"CivitAI cannot be reached ({error})"),
                                    filename=model.filename, url=url) from error
    _check_civitai_status(response, model, url, folder, page)
    version = response.json()
    if version.get("modelId") is not None:
        page = f"{base}/models/{version['modelId']}?modelVersionId={model.civitai_version_id}"
    file = _choose_civitai_file(version.get("files") or [], model.filename)
    expected = ((file.get("hashes") or {}).get("SHA256") or "").lower() or None
    partial = destination + PARTIAL_SUFFIX
    os.makedirs(folder, exist_ok=True)
    logger.info("Downloading %s from %s", model.filename, file.get("downloadUrl") or url)
    _download_resumably(file.get("downloadUrl") or url, partial, headers, progress, model, folder, page)
    if expected is None:
        logger.warning("CivitAI reports no SHA-256 for %s; keeping it unverified", model.filename)
    else:
        actual = _digest(partial, "sha256")
        if actual != expected:
            os.remove(partial)
            raise ModelIntegrityError(
                f"The download of {model.filename} from {url} does not match the SHA-256 CivitAI reports "
                f"(expected {expected}, got {actual}), so it was deleted. Try again; if it keeps failing, "
                f"download it by hand and put it in {folder}.", filename=model.filename, url=url)
    os.replace(partial, destination)


def _choose_civitai_file(files: list[dict[str, Any]], filename: str) -> dict[str, Any]:
    """The version's file with our name, else its primary file, else its first."""
    basename = os.path.basename(filename)
    for predicate in (lambda file: file.get("name") == basename, lambda file: file.get("primary")):
        for file in files:
            if predicate(file):
                return file
    return files[0] if files else {}


def _check_civitai_status(response: "httpx.Response", model: KnownModel, url: str, folder: str, page: str) -> None:
    status = response.status_code
    if status in (401, 403):
        raise GatedModelError(
            f"Cannot download {model.filename}: CivitAI refused access (HTTP {status}). Create an API key in "
            f"your CivitAI account settings, set {CIVITAI_TOKEN_VARIABLE} to it, and accept any terms at {page}.",
            filename=model.filename, url=url)
    if status >= 400:
        raise ModelUnavailableError(_by_hand(model.filename, url, folder, f"CivitAI answered HTTP {status}"),
                                    filename=model.filename, url=url)


def _download_resumably(url: str, partial: str, headers: dict[str, str], progress: ProgressBar,
                        model: KnownModel, folder: str, page: str) -> None:
    """Append ``url``'s bytes to ``partial``, resuming from what it holds after an interruption."""
    from huggingface_hub.utils import get_session

    for attempt in range(1, _ATTEMPTS + 1):
        offset = os.path.getsize(partial) if os.path.exists(partial) else 0
        request_headers = {**headers, **({"Range": f"bytes={offset}-"} if offset else {})}
        try:
            with get_session().stream("GET", url, headers=request_headers, timeout=_TIMEOUT_S,
                                      follow_redirects=True) as response:
                if offset and response.status_code == 416:
                    return  # the part already holds every byte; the checksum decides whether they are right
                _check_civitai_status(response, model, url, folder, page)
                if response.status_code != 206:
                    offset = 0  # the server sent the whole file
                length = response.headers.get("Content-Length")
                bar_class = _reporting_tqdm(progress)
                with open(partial, "ab" if offset else "wb") as stream, \
                        bar_class(total=offset + int(length) if length else None, initial=offset, unit="B",
                                  unit_scale=True, desc=model.filename, name="comfyui_known_models.civitai",
                                  disable=None) as bar:
                    # As they arrive, so that a broken connection loses nothing already received.
                    for chunk in response.iter_bytes():
                        stream.write(chunk)
                        bar.update(len(chunk))
                return
        except _network_errors() as error:
            if attempt == _ATTEMPTS:
                raise ModelUnavailableError(
                    _by_hand(model.filename, url, folder, f"the download broke off ({error}); what arrived is "
                             f"kept in {partial} and the next attempt resumes from it"),
                    filename=model.filename, url=url) from error
            logger.warning("The download of %s broke off (%s); resuming", model.filename, error)


def _reporting_tqdm(progress: ProgressBar) -> type:
    """A huggingface_hub progress bar class that also sends progress events to the waiting client and
    stops the download when its prompt is interrupted."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    context = current_execution()

    class ReportingTqdm(hf_tqdm):
        def __init__(self, *args: Any, **kwargs: Any):
            self._reported = kwargs.get("name") in _REPORTED_BARS
            self._done = kwargs.get("initial") or 0
            self._percent = -1
            super().__init__(*args, **kwargs)

        def update(self, n: Optional[float] = 1) -> Optional[bool]:
            shown = super().update(n)
            if context is not None and context.interrupted.is_set():
                raise InterruptProcessingException()
            self._done += n or 0
            # Whole percents only: a multi-gigabyte file would otherwise send thousands of events.
            if self._reported and self.total and int(100 * self._done / self.total) != self._percent:
                self._percent = int(100 * self._done / self.total)
                progress.update_absolute(int(self._done), int(self.total))
            return shown

    return ReportingTqdm


def _digest(path: str, algorithm: str) -> str:
    """A file's SHA-256, or its git blob id (how the hub names files that are not in LFS)."""
    if algorithm == "sha256":
        hasher = hashlib.sha256()
    else:
        hasher = hashlib.sha1()
        hasher.update(f"blob {os.path.getsize(path)}\0".encode())
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(_CHUNK_SIZE), b""):
            hasher.update(block)
    return hasher.hexdigest()


def _mismatch(path: str, etag: Optional[str]) -> Optional[str]:
    """The file's digest when it differs from the hub's ``etag``; None when it matches or cannot be checked."""
    expected = (etag or "").lower()
    algorithm = _DIGESTS.get(len(expected)) if re.fullmatch(r"[0-9a-f]+", expected) else None
    if algorithm is None:
        logger.warning("The hub gave no checksum for %s (ETag %r); it is kept unverified", path, etag)
        return None
    actual = _digest(path, algorithm)
    return actual if actual != expected else None


def _discard(path: str) -> None:
    """Delete a downloaded file, and the cache blob it links to."""
    for candidate in dict.fromkeys([os.path.realpath(path), path]):
        with contextlib.suppress(FileNotFoundError):
            os.remove(candidate)


def _link(source: str, destination: str) -> None:
    """Make ``destination`` a link to ``source`` (a hard link or a copy where symlinks are refused),
    replacing a stale entry in one step."""
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    staging = destination + ".linking"
    with contextlib.suppress(FileNotFoundError):
        os.remove(staging)
    try:
        os.symlink(os.path.abspath(source), staging)
    except OSError:
        try:
            os.link(os.path.realpath(source), staging)
        except OSError:
            import shutil
            shutil.copyfile(source, staging)
    os.replace(staging, destination)
