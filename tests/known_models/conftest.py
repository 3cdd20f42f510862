"""Fixtures for the known_models plugin: a fake hub on loopback, a plugin manager with the plugin and
small test plugins, and model folders in tmp_path."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import pluggy
import pytest

from comfy import cli_args, paths, paths_plugin
from comfy.cli_args_types import Configuration
from comfy.configuration import default_configuration
from comfy.hookspecs import hookimpl
from comfy.legacy import uninstall_legacy_modules
from comfy.nodes import registry as node_registry_module
from comfy.plugins import create_plugin_manager, set_plugin_manager
from comfyui_known_models import plugin as known_models_plugin
from fake_hub import FakeHub

# A repository of the fake hub that test entries point at, and one a shipped catalogue entry names.
TEST_REPO = "test-org/tiny-models"
SD15_REPO = "Comfy-Org/stable-diffusion-v1-5-archive"
SD15_FILE = "v1-5-pruned-emaonly-fp16.safetensors"


class ModelSizeNodes:
    """A test plugin with loader nodes that resolve a model and report its size and path."""

    class LoadCheckpointSize:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"ckpt_name": (paths.get_filename_list("checkpoints"),)}}

        RETURN_TYPES = ("INT",)
        FUNCTION = "load"
        OUTPUT_NODE = True
        CATEGORY = "testing"

        def load(self, ckpt_name):
            path = paths.get_full_path_or_raise("checkpoints", ckpt_name)
            return {"ui": {"size": [os.path.getsize(path)], "path": [path]}, "result": (os.path.getsize(path),)}

    class LoadModelSize:
        """Any folder, the name as a plain string (no choice list to validate against)."""

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"folder_name": ("STRING", {"default": "loras"}), "model_name": ("STRING", {})}}

        RETURN_TYPES = ("INT",)
        FUNCTION = "load"
        OUTPUT_NODE = True
        CATEGORY = "testing"

        def load(self, folder_name, model_name):
            path = paths.get_full_path_or_raise(folder_name, model_name)
            return {"ui": {"size": [os.path.getsize(path)], "path": [path]}, "result": (os.path.getsize(path),)}

    @hookimpl
    def comfyui_register_nodes(self, register):
        register("LoadCheckpointSize", self.LoadCheckpointSize)
        register("LoadModelSize", self.LoadModelSize)


class TestModels:
    """A test plugin registering known models that live on the fake hub."""

    @hookimpl
    def comfyui_register_known_models(self, register):
        register("checkpoints", "tiny.safetensors", repo_id=TEST_REPO)
        register("checkpoints", "nested.safetensors", repo_id=TEST_REPO, path_in_repo="split/deep/nested.safetensors",
                 aliases=("nested-alias.safetensors",))
        register("loras", "civitai_lora.safetensors", civitai_version_id=4242)
        register("text_encoders", "tiny_te.safetensors", repo_id=TEST_REPO)
        register("configs", "tiny.yaml", repo_id=TEST_REPO)
        register("huggingface", TEST_REPO, repo_id=TEST_REPO)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """The fake hub, with HF_ENDPOINT, CIVITAI_ENDPOINT and a private huggingface_hub cache pointing at it."""
    with FakeHub() as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.setenv("CIVITAI_ENDPOINT", fake.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "CIVITAI_API_TOKEN", "COMFYUI_DISABLE_KNOWN_MODELS",
                     "COMFYUI_FORCE_HF_LOCAL_DIR_MODE"):
            monkeypatch.delenv(name, raising=False)
        yield fake


@pytest.fixture
def pm() -> Iterator[pluggy.PluginManager]:
    """local_models, known_models and the test plugins on a real plugin manager, installed process-wide."""
    manager = create_plugin_manager(load_entrypoints=False)
    manager.register(paths_plugin, "local_models")
    manager.register(known_models_plugin, "known_models")
    manager.register(TestModels(), "test_models")
    manager.register(ModelSizeNodes(), "test_nodes")
    set_plugin_manager(manager)
    yield manager
    uninstall_legacy_modules()
    set_plugin_manager(None)
    cli_args.set_configuration(None)
    paths.set_state(None)
    node_registry_module.set_current(None)


@pytest.fixture
def configure(pm: pluggy.PluginManager, tmp_path: Path) -> Callable[..., Configuration]:
    """Make a configuration (defaults plus ``options``, base directory tmp_path) the process's, with its folders."""
    def configure(**options) -> Configuration:
        configuration = default_configuration(pm)
        configuration.update({"base_directory": str(tmp_path), **options})
        cli_args.set_configuration(configuration)
        paths.configure_paths(configuration)
        return configuration
    return configure


@pytest.fixture
def models(tmp_path: Path) -> Path:
    return tmp_path / "models"
