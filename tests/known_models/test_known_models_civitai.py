"""CivitAI downloads by model-version id, against the fake hub's CivitAI endpoints."""
from __future__ import annotations

from pathlib import Path

import pytest

from comfy import paths
from comfyui_known_models import GatedModelError, ModelIntegrityError, ModelUnavailableError
from fake_hub import CivitaiVersion, FakeHub, HubFile

VERSION = 4242
NAME = "civitai_lora.safetensors"


def content(size: int = 150_000) -> bytes:
    return (bytes(range(7, 256)) * (size // 249 + 1))[:size]


def add_version(hub: FakeHub, file: HubFile, token: str | None = None) -> None:
    hub.civitai[VERSION] = CivitaiVersion(model_id=77, file_name=NAME, file=file, token=token)


def test_a_civitai_model_downloads_by_version_id(hub: FakeHub, configure, models: Path):
    add_version(hub, HubFile(content()))
    configure()

    path = paths.get_full_path_or_raise("loras", NAME)

    assert path == str(models / "loras" / NAME)
    assert Path(path).read_bytes() == content() and not Path(path).is_symlink()
    assert [request.path for request in hub.requests if request.method == "GET"] == \
        [f"/api/v1/model-versions/{VERSION}", f"/api/download/models/{VERSION}", f"/storage/{VERSION}/{NAME}"]
    assert not Path(path + ".part").exists()
    hub.requests.clear()
    assert paths.get_full_path("loras", NAME) == path and hub.requests == []


def test_a_cut_off_civitai_download_resumes_from_its_part_file(hub: FakeHub, configure, models: Path):
    add_version(hub, HubFile(content(), cut_after=60_000, cuts_left=1))
    configure()

    path = paths.get_full_path_or_raise("loras", NAME)

    assert Path(path).read_bytes() == content()
    ranges = [request.range for request in hub.gets(f"/storage/{VERSION}/{NAME}")]
    assert ranges == [None, "bytes=60000-"]


def test_a_download_interrupted_by_a_restart_resumes(hub: FakeHub, configure, models: Path):
    add_version(hub, HubFile(content()))
    configure()
    # What a process killed mid-download left behind.
    partial = models / "loras" / f"{NAME}.part"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(content()[:100_000])

    path = paths.get_full_path_or_raise("loras", NAME)

    assert Path(path).read_bytes() == content()
    assert [request.range for request in hub.gets(f"/storage/{VERSION}/{NAME}")] == ["bytes=100000-"]
    assert not partial.exists()


def test_a_wrong_civitai_checksum_is_refused_and_nothing_is_kept(hub: FakeHub, configure, models: Path):
    add_version(hub, HubFile(content(), claimed_sha256="ef" * 32))
    configure()

    with pytest.raises(ModelIntegrityError, match="ef" * 32):
        paths.get_full_path("loras", NAME)

    assert sorted(path.name for path in (models / "loras").iterdir()) == [".locks"]


def test_a_civitai_model_that_needs_a_key(hub: FakeHub, configure, monkeypatch: pytest.MonkeyPatch):
    add_version(hub, HubFile(content()), token="civitai-key")
    configure()

    with pytest.raises(GatedModelError) as raised:
        paths.get_full_path("loras", NAME)
    message = str(raised.value)
    assert "CIVITAI_API_TOKEN" in message and f"{hub.url}/models/77?modelVersionId={VERSION}" in message

    monkeypatch.setenv("CIVITAI_API_TOKEN", "civitai-key")
    assert Path(paths.get_full_path_or_raise("loras", NAME)).read_bytes() == content()


def test_civitai_unreachable_names_the_download_url_and_folder(hub: FakeHub, configure, models: Path,
                                                               monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CIVITAI_ENDPOINT", "http://127.0.0.1:9")
    configure()

    with pytest.raises(ModelUnavailableError) as raised:
        paths.get_full_path("loras", NAME)

    message = str(raised.value)
    assert f"http://127.0.0.1:9/api/download/models/{VERSION}" in message
    assert f"put it in {models / 'loras'}" in message
