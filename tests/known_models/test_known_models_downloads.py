"""Hugging Face downloads of known models through comfy.paths, against the fake hub on loopback."""
from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from comfy import paths
from comfyui_known_models import GatedModelError, ModelIntegrityError, ModelUnavailableError
from conftest import TEST_REPO
from fake_hub import FakeHub, HubFile


def payload(size: int, seed: int = 1) -> bytes:
    pattern = bytes((index * 31 + seed) % 251 for index in range(4096))
    return (pattern * (size // len(pattern) + 1))[:size]


def resolve_path(path: str) -> str:
    return f"/{TEST_REPO}/resolve/" + path


def kept_files(directory: Path) -> list[Path]:
    """Files under ``directory`` other than lock files and huggingface_hub's bookkeeping."""
    if not directory.exists():
        return []
    return sorted(path for path in directory.rglob("*") if path.is_file() and ".locks" not in path.parts
                  and ".cache" not in path.parts and path.name != "CACHEDIR.TAG")


def test_an_absent_known_model_downloads_once_into_its_folder(hub: FakeHub, configure, models: Path, tmp_path: Path):
    content = payload(200_000)
    hub.add_repo(TEST_REPO, {"tiny.safetensors": HubFile(content)})
    configure()

    path = paths.get_full_path_or_raise("checkpoints", "tiny.safetensors")

    assert path == str(models / "checkpoints" / "tiny.safetensors")
    assert Path(path).read_bytes() == content
    # The file lives in huggingface_hub's cache; the model folder links to it.
    assert Path(path).is_symlink() and str(tmp_path / "hf-cache") in os.path.realpath(path)
    assert len(hub.gets("tiny.safetensors")) == 1
    # From now on it is a local file: no request at all.
    seen = len(hub.requests)
    assert paths.get_full_path("checkpoints", "tiny.safetensors") == path
    assert "tiny.safetensors" in paths.get_filename_list("checkpoints")
    assert len(hub.requests) == seen


def test_a_file_in_a_repository_subfolder_and_its_alias(hub: FakeHub, configure, models: Path):
    content = payload(5_000)
    hub.add_repo(TEST_REPO, {"split/deep/nested.safetensors": HubFile(content)})
    configure()

    path = paths.get_full_path_or_raise("checkpoints", "nested-alias.safetensors")

    assert path == str(models / "checkpoints" / "nested.safetensors")
    assert Path(path).read_bytes() == content
    assert [request.path for request in hub.gets("nested.safetensors")] == \
        [resolve_path(f"{hub.repos[TEST_REPO].commit}/split/deep/nested.safetensors")]
    # Workflows saved on Windows spell names with backslashes; the legacy "clip" folder name maps too.
    assert paths.get_full_path("checkpoints", "nested.safetensors") == path


def test_the_cache_already_holding_the_file_needs_no_download(hub: FakeHub, configure, models: Path):
    from huggingface_hub import hf_hub_download

    hub.add_repo(TEST_REPO, {"tiny.safetensors": HubFile(payload(1_000))})
    configure()
    # Another tool put it in the shared cache before.
    hf_hub_download(TEST_REPO, "tiny.safetensors", endpoint=hub.url, cache_dir=os.environ["HF_HUB_CACHE"])
    hub.requests.clear()

    path = paths.get_full_path_or_raise("checkpoints", "tiny.safetensors")

    assert Path(path).read_bytes() == payload(1_000)
    assert hub.requests == []


def test_a_cut_off_download_resumes(hub: FakeHub, configure):
    from huggingface_hub import constants

    # huggingface_hub writes whole chunks, so the resume starts after the last one that arrived.
    chunk = constants.DOWNLOAD_CHUNK_SIZE
    content = payload(chunk + chunk // 2, seed=3)
    hub.add_repo(TEST_REPO, {"tiny.safetensors": HubFile(content, cut_after=chunk + 1000, cuts_left=1)})
    configure()

    path = paths.get_full_path_or_raise("checkpoints", "tiny.safetensors")

    assert Path(path).read_bytes() == content
    first, second = hub.gets("tiny.safetensors")
    assert first.range is None and second.range == f"bytes={chunk}-"


def test_a_gated_model_asks_to_log_in_and_accept_the_terms(hub: FakeHub, configure, models: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
    hub.add_repo(TEST_REPO, {"tiny.safetensors": HubFile(payload(1_000))}, token="hf_secret")
    configure()

    with pytest.raises(GatedModelError) as raised:
        paths.get_full_path("checkpoints", "tiny.safetensors")

    message = str(raised.value)
    assert "huggingface-cli login" in message
    assert f"accept the terms at {hub.url}/{TEST_REPO}" in message and "401" in message
    assert kept_files(models) == []

    # With the token the same request succeeds.
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    path = paths.get_full_path_or_raise("checkpoints", "tiny.safetensors")
    assert Path(path).read_bytes() == payload(1_000)
    assert hub.gets("tiny.safetensors")[-1].authorization == "Bearer hf_secret"


def test_a_wrong_checksum_is_refused_and_nothing_is_kept(hub: FakeHub, configure, models: Path, tmp_path: Path):
    hub.add_repo(TEST_REPO, {"tiny.safetensors": HubFile(payload(50_000), claimed_sha256="ab" * 32)})
    configure()

    with pytest.raises(ModelIntegrityError) as raised:
        paths.get_full_path("checkpoints", "tiny.safetensors")

    assert "ab" * 32 in str(raised.value) and "deleted" in str(raised.value)
    assert kept_files(models) == [] and kept_files(tmp_path / "hf-cache") == []


def test_a_file_outside_lfs_is_checked_by_its_git_blob_id(hub: FakeHub, configure, models: Path):
    hub.add_repo(TEST_REPO, {"tiny.yaml": HubFile(b"model:\n  target: tiny\n", lfs=False)})
    configure()

    path = paths.get_full_path_or_raise("configs", "tiny.yaml")

    assert Path(path).read_bytes() == b"model:\n  target: tiny\n"


def test_no_network_names_the_file_the_folder_and_the_url(hub: FakeHub, configure, models: Path,
                                                          monkeypatch: pytest.MonkeyPatch):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    configure()

    with pytest.raises(ModelUnavailableError) as raised:
        paths.get_full_path("checkpoints", "tiny.safetensors")

    message = str(raised.value)
    assert "Cannot download tiny.safetensors" in message
    assert f"http://127.0.0.1:{port}/{TEST_REPO}/resolve/main/tiny.safetensors" in message
    assert f"put it in {models / 'checkpoints'}" in message


def test_a_file_the_hub_does_not_have(hub: FakeHub, configure):
    hub.add_repo(TEST_REPO, {})
    configure()

    with pytest.raises(ModelUnavailableError, match="404"):
        paths.get_full_path("checkpoints", "tiny.safetensors")


def test_concurrent_requests_download_once(hub: FakeHub, configure, models: Path):
    content = payload(400_000)
    hub.add_repo(TEST_REPO, {"tiny.safetensors": HubFile(content, delay=0.002)})
    configure()
    results: list[str] = []
    errors: list[BaseException] = []

    def resolve() -> None:
        try:
            results.append(paths.get_full_path_or_raise("checkpoints", "tiny.safetensors"))
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=resolve) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert results == [str(models / "checkpoints" / "tiny.safetensors")] * 4
    assert len(hub.gets("tiny.safetensors")) == 1
    assert Path(results[0]).read_bytes() == content


def test_local_dir_mode_writes_plain_files_and_no_cache(hub: FakeHub, configure, models: Path, tmp_path: Path):
    content = payload(10_000)
    hub.add_repo(TEST_REPO, {"split/deep/nested.safetensors": HubFile(content)})
    configure(force_hf_local_dir_mode=True)

    path = paths.get_full_path_or_raise("checkpoints", "nested.safetensors")

    assert path == str(models / "checkpoints" / "nested.safetensors")
    assert not Path(path).is_symlink() and Path(path).read_bytes() == content
    assert not (tmp_path / "hf-cache").exists()
    assert kept_files(models) == [Path(path)]


def test_a_wrong_checksum_in_local_dir_mode_keeps_nothing(hub: FakeHub, configure, models: Path):
    hub.add_repo(TEST_REPO, {"tiny.safetensors": HubFile(payload(10_000), claimed_sha256="cd" * 32)})
    configure(force_hf_local_dir_mode=True)

    with pytest.raises(ModelIntegrityError):
        paths.get_full_path("checkpoints", "tiny.safetensors")

    assert kept_files(models) == []


def test_a_broken_link_is_replaced_by_a_fresh_download(hub: FakeHub, configure, models: Path):
    hub.add_repo(TEST_REPO, {"tiny.safetensors": HubFile(payload(2_000))})
    configure()
    (models / "checkpoints").mkdir(parents=True)
    # A link left behind when someone cleaned the cache.
    (models / "checkpoints" / "tiny.safetensors").symlink_to(models / "gone" / "tiny.safetensors")

    path = paths.get_full_path_or_raise("checkpoints", "tiny.safetensors")

    assert Path(path).read_bytes() == payload(2_000)
