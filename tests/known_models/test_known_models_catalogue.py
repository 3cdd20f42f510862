"""The catalogue: the shipped data, registration from other plugins, choice lists, local files first, options."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from comfy import cli_args, paths
from comfy.hookspecs import hookimpl
from comfy.plugins import PluginConflictError
from comfyui_known_models import get_catalogue
from comfyui_known_models.catalogue import Catalogue, KnownModel, read_catalogue_file
from conftest import SD15_FILE, SD15_REPO
from fake_hub import FakeHub

# Names that shared workflows use, by folder: the catalogue must know each of them.
WORKFLOW_NAMES = {
    "checkpoints": ["v1-5-pruned-emaonly.safetensors", SD15_FILE, "v2-1_768-ema-pruned.safetensors",
                    "sd_xl_base_1.0.safetensors", "sd_xl_refiner_1.0.safetensors", "sd_xl_turbo_1.0_fp16.safetensors",
                    "sd3.5_large.safetensors", "sd3.5_large_fp8_scaled.safetensors", "flux1-dev-fp8.safetensors",
                    "flux1-schnell-fp8.safetensors"],
    "diffusion_models": ["flux1-dev.safetensors", "flux1-schnell.safetensors"],
    "text_encoders": ["clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors",
                      "t5xxl_fp8_e4m3fn.safetensors"],
    "vae": ["ae.safetensors", "sdxl_vae.safetensors", "vae-ft-mse-840000-ema-pruned.safetensors"],
    "loras": ["lcm_lora_sdxl.safetensors"],
    "controlnet": ["control_v11p_sd15_canny_fp16.safetensors"],
    "upscale_models": ["RealESRGAN_x4plus.pth"],
    "clip_vision": ["clip_vision_g.safetensors"],
}


def test_the_shipped_catalogue_knows_the_models_shared_workflows_name():
    catalogue = Catalogue()
    read_catalogue_file(lambda *args, **kwargs: catalogue.add("known_models", *args, **kwargs))

    assert len(catalogue) > 150
    for folder_name, names in WORKFLOW_NAMES.items():
        for name in names:
            assert catalogue.find(folder_name, name) is not None, f"{folder_name}/{name}"
    sd15 = catalogue.find("checkpoints", SD15_FILE)
    assert (sd15.repo_id, sd15.repo_path) == (SD15_REPO, SD15_FILE)
    assert catalogue.find("vae", "ae.safetensors").repo_path == "split_files/vae/ae.safetensors"
    assert catalogue.find("checkpoints", "juggernautXL_v9Rundiffusionphoto2.safetensors").civitai_version_id == 357609
    assert catalogue.find("huggingface", "microsoft/Florence-2-large-ft").repo_id == "microsoft/Florence-2-large-ft"
    # Legacy folder names find the same entries.
    assert catalogue.find("clip", "t5xxl_fp16.safetensors") is catalogue.find("text_encoders", "t5xxl_fp16.safetensors")


def test_known_names_appear_in_choice_lists(hub: FakeHub, configure):
    configure()

    assert {SD15_FILE, "sd_xl_base_1.0.safetensors", "tiny.safetensors"} <= set(paths.get_filename_list("checkpoints"))
    assert "t5xxl_fp16.safetensors" in paths.get_filename_list("clip")
    assert "flux1-dev.safetensors" in paths.get_filename_list("unet")
    assert "nested.safetensors" in paths.get_filename_list("checkpoints")
    assert "nested-alias.safetensors" not in paths.get_filename_list("checkpoints")


def test_disabled_known_models_are_hidden_and_not_downloaded(hub: FakeHub, configure, monkeypatch):
    configure()
    monkeypatch.setenv("COMFYUI_DISABLE_KNOWN_MODELS", "1")
    cli_args.set_configuration(None)  # the process configuration is parsed again, from the environment

    assert cli_args.args.disable_known_models is True
    assert SD15_FILE not in paths.get_filename_list("checkpoints")
    assert paths.get_full_path("checkpoints", SD15_FILE) is None
    with pytest.raises(FileNotFoundError):
        paths.get_full_path_or_raise("checkpoints", SD15_FILE)
    assert hub.requests == []


def test_local_files_win_over_downloads(hub: FakeHub, configure, models: Path, tmp_path: Path):
    other_base = tmp_path / "other"
    extra = tmp_path / "extra"
    (extra / "loras").mkdir(parents=True)
    (extra / "loras" / "lcm_lora_sdxl.safetensors").write_bytes(b"extra")
    config = tmp_path / "extra_model_paths.yaml"
    config.write_text(textwrap.dedent(f"""
        mine:
          base_path: {extra}
          loras: loras
    """))
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / SD15_FILE).write_bytes(b"local")
    (other_base / "models" / "vae").mkdir(parents=True)
    (other_base / "models" / "vae" / "ae.safetensors").write_bytes(b"other base")
    configure(base_paths=[str(other_base)])

    assert paths.get_full_path("checkpoints", SD15_FILE) == str(models / "checkpoints" / SD15_FILE)
    assert paths.get_full_path("vae", "ae.safetensors") == str(other_base / "models" / "vae" / "ae.safetensors")
    lora = extra / "loras" / "lcm_lora_sdxl.safetensors"
    assert paths.get_full_path("loras", "lcm_lora_sdxl.safetensors") == str(lora)
    assert hub.requests == []


def test_unknown_names_are_left_to_other_resolvers(hub: FakeHub, configure):
    configure()
    assert paths.get_full_path("checkpoints", "not-a-known-model.safetensors") is None
    assert hub.requests == []


class OtherModels:
    @hookimpl
    def comfyui_register_known_models(self, register):
        register("loras", "other_style.safetensors", repo_id="other/loras")


class Clashing:
    @hookimpl
    def comfyui_register_known_models(self, register):
        register("loras", "other_style.safetensors", repo_id="clash/loras")


def test_plugins_add_models_and_a_clash_names_both(pm):
    pm.register(OtherModels(), "other_models")
    assert get_catalogue(pm).find("loras", "other_style.safetensors").repo_id == "other/loras"

    pm.register(Clashing(), "clashing")
    with pytest.raises(PluginConflictError, match="'other_models'.*'clashing'"):
        get_catalogue(pm)


def test_entries_must_name_one_source_and_stay_in_their_folder():
    with pytest.raises(ValueError, match="either repo_id or civitai_version_id"):
        KnownModel("checkpoints", "x.safetensors")
    with pytest.raises(ValueError, match="either repo_id or civitai_version_id"):
        KnownModel("checkpoints", "x.safetensors", repo_id="a/b", civitai_version_id=1)
    with pytest.raises(ValueError, match="inside its folder"):
        KnownModel("checkpoints", "../x.safetensors", repo_id="a/b")
    with pytest.raises(ValueError, match="not a Hugging Face repository id"):
        KnownModel("checkpoints", "x.safetensors", repo_id="no-owner")
    assert KnownModel("clip", "sub\\x.safetensors", repo_id="a/b").filename == "sub/x.safetensors"


def test_the_command_line_has_the_plugins_options():
    result = subprocess.run([sys.executable, "-m", "comfy.cmd.main", "--help"], capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "200"}, timeout=120)

    assert result.returncode == 0, result.stderr
    assert "--disable-known-models" in result.stdout and "--force-hf-local-dir-mode" in result.stdout
