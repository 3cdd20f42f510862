"""Hugging Face repositories as models: snapshot folders through the plugin's function and comfy.paths."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from comfy import paths
from comfyui_known_models import ModelIntegrityError, ModelUnavailableError, huggingface_repo
from conftest import TEST_REPO
from fake_hub import FakeHub, HubFile

FILES = {"config.json": HubFile(b'{"model_type": "tiny"}', lfs=False),
         "model.safetensors": HubFile(b"\x01weights" * 3_000),
         "tokenizer/vocab.txt": HubFile(b"a\nb\nc\n", lfs=False)}


def snapshot_files(folder: str) -> dict[str, bytes]:
    root = Path(folder)
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*"))
            if path.is_file() and ".cache" not in path.parts}


def test_a_repository_resolves_to_a_snapshot_folder(hub: FakeHub, configure, tmp_path: Path):
    hub.add_repo(TEST_REPO, dict(FILES))
    configure()

    folder = paths.get_full_path("huggingface", TEST_REPO)

    assert folder is not None and folder.startswith(str(tmp_path / "hf-cache"))
    assert snapshot_files(folder) == {name: file.content for name, file in FILES.items()}
    # Found in the cache from now on, without asking the hub.
    hub.requests.clear()
    assert huggingface_repo(TEST_REPO) == folder and hub.requests == []
    assert TEST_REPO in paths.get_filename_list("huggingface")


def test_local_dir_mode_puts_the_repository_in_models_huggingface(hub: FakeHub, configure, models: Path,
                                                                  tmp_path: Path):
    hub.add_repo(TEST_REPO, dict(FILES))
    configure(force_hf_local_dir_mode=True)

    folder = huggingface_repo(TEST_REPO)

    assert folder == str(models / "huggingface" / "test-org" / "tiny-models")
    assert snapshot_files(folder) == {name: file.content for name, file in FILES.items()}
    assert not (tmp_path / "hf-cache").exists()
    assert not (models / "huggingface" / ".incomplete" / "test-org" / "tiny-models").exists()


def test_a_repository_folder_on_disk_wins(hub: FakeHub, configure, models: Path):
    configure()
    local = models / "huggingface" / "someone" / "their-model"
    local.mkdir(parents=True)
    (local / "config.json").write_text("{}")

    assert paths.get_full_path("huggingface", "someone/their-model") == str(local)
    assert "someone/their-model" in paths.get_filename_list("huggingface")
    assert hub.requests == []


def test_a_repository_file_with_a_wrong_checksum_is_deleted(hub: FakeHub, configure, tmp_path: Path):
    files = dict(FILES)
    files["model.safetensors"] = HubFile(b"\x01weights" * 3_000, claimed_sha256="12" * 32)
    hub.add_repo(TEST_REPO, files)
    configure()

    with pytest.raises(ModelIntegrityError, match="model.safetensors"):
        huggingface_repo(TEST_REPO)

    storage = tmp_path / "hf-cache" / "models--test-org--tiny-models"
    kept = {path.name for path in storage.rglob("*") if path.is_file() or path.is_symlink()}
    assert "model.safetensors" not in kept and "12" * 32 not in kept
    assert "config.json" in kept


def test_repositories_are_not_downloaded_when_disabled(hub: FakeHub, configure):
    hub.add_repo(TEST_REPO, dict(FILES))
    configure(disable_known_models=True)

    assert paths.get_full_path("huggingface", TEST_REPO) is None
    with pytest.raises(FileNotFoundError, match="--disable-known-models"):
        huggingface_repo(TEST_REPO)
    assert hub.requests == []
    assert TEST_REPO not in paths.get_filename_list("huggingface")


def test_a_name_that_is_not_a_repository_id_is_not_resolved(hub: FakeHub, configure):
    configure()
    assert paths.get_full_path("huggingface", "../escape") is None
    assert hub.requests == []


def test_no_network_says_where_to_put_the_repository(hub: FakeHub, configure, models: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    configure()

    with pytest.raises(ModelUnavailableError) as raised:
        huggingface_repo(TEST_REPO)

    message = str(raised.value)
    assert f"http://127.0.0.1:9/{TEST_REPO}" in message
    assert f"put it in {models / 'huggingface' / 'test-org' / 'tiny-models'}" in message


def test_concurrent_requests_for_a_repository_download_it_once(hub: FakeHub, configure):
    files = dict(FILES)
    files["model.safetensors"] = HubFile(b"\x02weights" * 30_000, delay=0.001)
    hub.add_repo(TEST_REPO, files)
    configure()
    folders: list[str] = []

    threads = [threading.Thread(target=lambda: folders.append(huggingface_repo(TEST_REPO))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(folders) == 3 and len(set(folders)) == 1
    assert len(hub.gets("model.safetensors")) == 1
