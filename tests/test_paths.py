"""Paths: ComfyUI's folder layout and folder_paths API, extra_model_paths.yaml, and the model hooks."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from comfy import paths, paths_plugin
from comfy.cli_args_types import Configuration
from comfy.hookspecs import hookimpl
from comfy.plugins import create_plugin_manager, set_plugin_manager


@pytest.fixture
def pm():
    """A plugin manager with only the kernel's local_models plugin, installed process-wide."""
    manager = create_plugin_manager(load_entrypoints=False)
    manager.register(paths_plugin, name="local_models")
    set_plugin_manager(manager)
    yield manager
    set_plugin_manager(None)


@pytest.fixture
def configure(pm):
    """configure_paths with a Configuration from keyword options; the state is dropped afterwards."""
    def configure(**options) -> paths.FolderPaths:
        return paths.configure_paths(Configuration(options))
    yield configure
    paths.set_state(None)


def touch(path: Path, content: bytes = b"weights") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def bump_mtime(directory: Path) -> None:
    # Directory mtimes have the kernel's clock-tick resolution; a file made within the same tick
    # as the listing would leave it unchanged, so move it on explicitly.
    stat = directory.stat()
    os.utime(directory, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_base_directory_layout(tmp_path, configure):
    state = configure(base_directory=str(tmp_path))
    models = tmp_path / "models"
    assert paths.base_path == str(tmp_path) and paths.models_dir == str(models) == state.models_dir
    assert paths.folder_names_and_paths is state.folder_names_and_paths
    assert paths.get_folder_paths("checkpoints") == [str(models / "checkpoints")]
    assert paths.get_folder_paths("text_encoders") == [str(models / "text_encoders"), str(models / "clip")]
    assert paths.get_folder_paths("diffusion_models") == [str(models / "unet"), str(models / "diffusion_models")]
    assert paths.get_folder_paths("controlnet") == [str(models / "controlnet"), str(models / "t2i_adapter")]
    assert paths.get_folder_paths("custom_nodes") == [str(tmp_path / "custom_nodes")]
    for name in ("loras", "vae", "clip_vision", "style_models", "embeddings", "diffusers", "vae_approx", "gligen",
                 "upscale_models", "latent_upscale_models", "hypernetworks", "photomaker", "classifiers",
                 "model_patches", "audio_encoders", "configs"):
        assert paths.get_folder_paths(name) == [str(models / name)]
    assert paths.folder_names_and_paths["checkpoints"][1] is paths.supported_pt_extensions
    assert paths.folder_names_and_paths["configs"][1] == {".yaml"}
    for name in ("input", "output", "temp", "user"):
        directory = str(tmp_path / name)
        assert getattr(paths, f"get_{name}_directory")() == directory == getattr(paths, f"{name}_directory")
    assert paths.get_directory_by_type("output") == str(tmp_path / "output")
    assert paths.get_directory_by_type("user") is None
    with pytest.raises(KeyError):
        paths.get_folder_paths("no_such_folder")
    assert not (tmp_path / "models").exists()  # nothing is created unless asked


def test_cwd_is_the_default_base(tmp_path, configure, monkeypatch):
    monkeypatch.chdir(tmp_path)
    configure()
    assert paths.models_dir == str(tmp_path / "models")
    configure(cwd=str(tmp_path / "w"), base_directory=str(tmp_path / "b"))
    assert paths.base_path == str(tmp_path / "w")
    assert paths.get_folder_paths("loras") == [str(tmp_path / "w" / "models" / "loras"),
                                               str(tmp_path / "b" / "models" / "loras")]


def test_directory_overrides(tmp_path, configure):
    configure(base_directory=str(tmp_path), output_directory="renders", input_directory=str(tmp_path / "in"))
    assert paths.get_output_directory() == str(tmp_path / "renders")
    assert paths.get_input_directory() == str(tmp_path / "in")
    paths.set_temp_directory(str(tmp_path / "scratch"))
    assert paths.get_temp_directory() == paths.temp_directory == str(tmp_path / "scratch")
    paths.set_user_directory(str(tmp_path / "people"))
    assert paths.get_public_user_directory("alice") == str(tmp_path / "people" / "alice")
    assert paths.get_public_user_directory("__system") is None
    assert paths.get_system_user_directory("cache") == str(tmp_path / "people" / "__cache")


def test_base_paths_add_their_models(tmp_path, configure):
    main, extra = tmp_path / "main", tmp_path / "extra"
    touch(main / "models" / "checkpoints" / "a.safetensors")
    touch(extra / "models" / "checkpoints" / "b.safetensors")
    touch(extra / "models" / "checkpoints" / "a.safetensors")
    configure(base_directory=str(main), base_paths=[str(extra)])
    assert paths.get_folder_paths("checkpoints") == [str(main / "models" / "checkpoints"),
                                                     str(extra / "models" / "checkpoints")]
    assert paths.get_filename_list("checkpoints") == ["a.safetensors", "b.safetensors"]
    assert paths.get_full_path("checkpoints", "a.safetensors") == str(main / "models" / "checkpoints" / "a.safetensors")
    assert paths.get_full_path("checkpoints", "b.safetensors") == str(extra / "models" / "checkpoints" / "b.safetensors")
    assert paths.get_output_directory() == str(main / "output")


def test_extra_model_paths_yaml_in_comfyui_format(tmp_path, configure):
    shared = tmp_path / "shared"
    touch(shared / "models" / "Stable-diffusion" / "shared.ckpt")
    touch(shared / "clips" / "t5.safetensors")
    touch(tmp_path / "configs" / "local" / "lora.pt")
    config = tmp_path / "configs" / "extra.yaml"
    config.write_text(textwrap.dedent("""
        a111:
            base_path: ../shared
            is_default: true
            checkpoints: |
                models/Stable-diffusion
                models/more
            clip: clips
        relative:
            loras: local
        empty:
    """))
    base = tmp_path / "base"
    (base).mkdir()
    (base / "extra_model_paths.yaml").write_text(f"from_base:\n    base_path: {tmp_path / 'mine'}\n    vae: vae\n")
    configure(base_directory=str(base), extra_model_paths_config=[str(config)])
    assert paths.get_folder_paths("checkpoints") == [str(shared / "models" / "more"),
                                                     str(shared / "models" / "Stable-diffusion"),
                                                     str(base / "models" / "checkpoints")]
    assert paths.get_folder_paths("text_encoders")[0] == str(shared / "clips")  # legacy "clip", is_default
    assert paths.get_folder_paths("loras")[-1] == str(tmp_path / "configs" / "local")
    assert paths.get_folder_paths("vae")[-1] == str(tmp_path / "mine" / "vae")
    assert paths.get_filename_list("checkpoints") == ["shared.ckpt"]
    assert paths.get_filename_list("clip") == ["t5.safetensors"]
    assert paths.get_full_path("loras", "lora.pt") == str(tmp_path / "configs" / "local" / "lora.pt")


def test_add_model_folder_path(tmp_path, configure):
    configure(base_directory=str(tmp_path))
    paths.add_model_folder_path("ipadapter", str(tmp_path / "ip"))
    assert paths.get_folder_paths("ipadapter") == [str(tmp_path / "ip")]
    paths.add_model_folder_path("unet", str(tmp_path / "u2"))
    paths.add_model_folder_path("unet", str(tmp_path / "u1"), is_default=True)
    paths.add_model_folder_path("unet", str(tmp_path / "u1"))  # already there: no duplicate
    paths.add_model_folder_path("unet", str(tmp_path / "u2"), is_default=True)  # moved to the front
    assert paths.get_folder_paths("diffusion_models")[:2] == [str(tmp_path / "u2"), str(tmp_path / "u1")]
    assert paths.get_folder_paths("diffusion_models").count(str(tmp_path / "u1")) == 1


def test_legacy_names(tmp_path, configure):
    touch(tmp_path / "models" / "unet" / "old.safetensors")
    touch(tmp_path / "models" / "diffusion_models" / "new.safetensors")
    touch(tmp_path / "models" / "clip" / "te.safetensors")
    configure(base_directory=str(tmp_path))
    assert paths.map_legacy("clip") == "text_encoders" and paths.map_legacy("unet") == "diffusion_models"
    assert paths.get_folder_paths("clip") == paths.get_folder_paths("text_encoders")
    assert paths.get_filename_list("unet") == paths.get_filename_list("diffusion_models") == ["new.safetensors",
                                                                                              "old.safetensors"]
    assert paths.get_full_path("clip", "te.safetensors") == str(tmp_path / "models" / "clip" / "te.safetensors")


def test_filename_list_filters_recurses_and_follows_changes(tmp_path, configure):
    loras = tmp_path / "models" / "loras"
    touch(loras / "b.safetensors")
    touch(loras / "style" / "a.pt")
    touch(loras / "notes.txt")
    touch(loras / ".git" / "objects.pt")
    configure(base_directory=str(tmp_path))
    assert paths.get_filename_list("loras") == ["b.safetensors", os.path.join("style", "a.pt")]

    # Cached: a change the directory mtimes do not show is not seen...
    stat = (loras / "style").stat()
    (loras / "style" / "a.pt").unlink()
    os.utime(loras / "style", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.path.join("style", "a.pt") in paths.get_filename_list("loras")
    # ...and a changed mtime in any subfolder invalidates the listing.
    bump_mtime(loras / "style")
    assert paths.get_filename_list("loras") == ["b.safetensors"]

    touch(loras / "c.sft")
    bump_mtime(loras)
    assert paths.get_filename_list("loras") == ["b.safetensors", "c.sft"]

    # A folder made after the listing, or added to the folder, is picked up.
    touch(tmp_path / "more" / "d.ckpt")
    paths.add_model_folder_path("loras", str(tmp_path / "more"))
    assert paths.get_filename_list("loras") == ["b.safetensors", "c.sft", "d.ckpt"]
    assert paths.get_filename_list("no_such_folder") == []


def test_get_full_path_stays_inside_the_folders(tmp_path, configure):
    touch(tmp_path / "models" / "checkpoints" / "sub" / "m.safetensors")
    touch(tmp_path / "models" / "secret.safetensors")
    configure(base_directory=str(tmp_path))
    expected = str(tmp_path / "models" / "checkpoints" / "sub" / "m.safetensors")
    assert paths.get_full_path("checkpoints", "sub/m.safetensors") == expected
    assert paths.get_full_path("checkpoints", "sub\\m.safetensors") == expected  # saved on Windows
    assert paths.get_full_path("checkpoints", "../secret.safetensors") is None
    assert paths.get_full_path("checkpoints", str(tmp_path / "models" / "secret.safetensors")) is None
    assert paths.get_full_path("checkpoints", "missing.safetensors") is None
    assert paths.get_full_path("no_such_folder", "m.safetensors") is None
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        paths.get_full_path_or_raise("checkpoints", "missing.safetensors")


class Redirector:
    """Resolves one name to a file of its own and offers names of models it knows."""

    def __init__(self, target: Path):
        self.target = target

    @hookimpl
    def comfyui_resolve_model(self, folder_name, filename):
        if (folder_name, filename) == ("checkpoints", "a.safetensors"):
            return str(self.target)
        return None

    @hookimpl
    def comfyui_model_names(self, folder_name):
        if folder_name == "checkpoints":
            return ["known/z.safetensors", "a.safetensors"]
        return []


def test_a_resolver_plugin_wins_over_local_files(tmp_path, configure, pm):
    local = touch(tmp_path / "models" / "checkpoints" / "a.safetensors")
    touch(tmp_path / "models" / "checkpoints" / "b.safetensors")
    elsewhere = touch(tmp_path / "downloads" / "a.safetensors")
    configure(base_directory=str(tmp_path))
    assert paths.get_full_path("checkpoints", "a.safetensors") == str(local)
    pm.register(Redirector(elsewhere), name="redirector")
    assert paths.get_full_path("checkpoints", "a.safetensors") == str(elsewhere)
    assert paths.get_full_path("checkpoints", "b.safetensors") == str(tmp_path / "models" / "checkpoints" / "b.safetensors")


def test_model_names_from_plugins_join_the_list(tmp_path, configure, pm):
    touch(tmp_path / "models" / "checkpoints" / "a.safetensors")
    touch(tmp_path / "models" / "loras" / "l.pt")
    configure(base_directory=str(tmp_path))
    pm.register(Redirector(tmp_path), name="redirector")
    assert paths.get_filename_list("checkpoints") == ["a.safetensors", "known/z.safetensors"]
    assert paths.get_filename_list("loras") == ["l.pt"]


def test_local_models_can_be_disabled(tmp_path, configure, pm):
    touch(tmp_path / "models" / "checkpoints" / "a.safetensors")
    configure(base_directory=str(tmp_path))
    pm.unregister(name="local_models")
    pm.set_blocked("local_models")
    assert paths.get_full_path("checkpoints", "a.safetensors") is None


def test_local_models_provides_folder_paths(pm):
    registered = []
    pm.hook.comfyui_register_legacy_modules(register=lambda name, module: registered.append((name, module)))
    assert registered == [("folder_paths", "comfy.paths")]


def test_local_models_is_an_installed_entry_point():
    from importlib.metadata import entry_points
    assert {ep.name: ep.value for ep in entry_points(group="comfyui.plugins")}["local_models"] == "comfy.paths_plugin"


def test_create_directories(tmp_path, configure):
    state = configure(base_directory=str(tmp_path / "base"), base_paths=[str(tmp_path / "more")],
                      output_directory=str(tmp_path / "out"), create_directories=True)
    for folders, _extensions in state.folder_names_and_paths.values():
        assert all(Path(folder).is_dir() for folder in folders)
    assert (tmp_path / "base" / "models" / "checkpoints").is_dir()
    assert (tmp_path / "base" / "models" / "clip").is_dir()
    assert (tmp_path / "more" / "models" / "loras").is_dir()
    assert (tmp_path / "base" / "custom_nodes").is_dir()
    for directory in (tmp_path / "base" / "input", tmp_path / "base" / "temp", tmp_path / "base" / "user",
                      tmp_path / "out"):
        assert directory.is_dir()


def test_save_image_path_counters_and_subfolders(tmp_path, configure):
    configure(base_directory=str(tmp_path))
    output = paths.get_output_directory()
    result = paths.get_save_image_path("ComfyUI", output)
    assert result == (output, "ComfyUI", 1, "", "ComfyUI")
    assert Path(output).is_dir()
    for name in ("ComfyUI_00001_.png", "ComfyUI_00007_.png", "ComfyUI_00003_.webp", "Other_00009_.png",
                 "ComfyUI_final.png", "ComfyUIx_00012_.png"):
        touch(Path(output) / name)
    full_output_folder, filename, counter, subfolder, prefix = paths.get_save_image_path("ComfyUI", output)
    assert (filename, counter) == ("ComfyUI", 8)

    result = paths.get_save_image_path("portraits/day1/face", output)
    assert result.full_output_folder == os.path.join(output, "portraits", "day1")
    assert (result.filename, result.counter, result.subfolder) == ("face", 1, os.path.join("portraits", "day1"))
    assert Path(result.full_output_folder).is_dir()

    result = paths.get_save_image_path("sizes/img_%width%x%height%", output, 512, 768)
    assert (result.filename, result.subfolder, result.filename_prefix) == ("img_512x768", "sizes",
                                                                          "sizes/img_512x768")
    year = paths.get_save_image_path("%year%/x", output).subfolder
    assert year.isdigit() and len(year) == 4


@pytest.mark.parametrize("prefix", ["../escape", "a/../../escape", "/etc/escape"])
def test_save_image_path_refuses_to_leave_the_output_folder(tmp_path, prefix):
    output = tmp_path / "output"
    output.mkdir()
    with pytest.raises(paths.OutputPathError, match="outside the output folder"):
        paths.get_save_image_path(prefix, str(output))
    assert not (tmp_path / "escape").exists()


def test_annotated_filepaths(tmp_path, configure):
    configure(base_directory=str(tmp_path))
    touch(tmp_path / "output" / "o.png")
    touch(tmp_path / "input" / "i.png")
    assert paths.annotated_filepath("o.png [output]") == ("o.png", str(tmp_path / "output"))
    assert paths.annotated_filepath("t.png [temp]") == ("t.png", str(tmp_path / "temp"))
    assert paths.annotated_filepath("plain.png") == ("plain.png", None)
    assert paths.get_annotated_filepath("o.png [output]") == str(tmp_path / "output" / "o.png")
    assert paths.get_annotated_filepath("i.png") == str(tmp_path / "input" / "i.png")
    assert paths.get_annotated_filepath("i.png", str(tmp_path / "x")) == str(tmp_path / "x" / "i.png")
    assert paths.exists_annotated_filepath("o.png [output]") and paths.exists_annotated_filepath("i.png")
    assert not paths.exists_annotated_filepath("o.png")


def test_filters():
    files = ["a.safetensors", "b.PT", "c.txt", "d"]
    assert paths.filter_files_extensions(files, {".safetensors", ".pt"}) == ["a.safetensors", "b.PT"]
    assert paths.filter_files_extensions(files, {""}) == ["d"]
    assert paths.filter_files_extensions(files, set()) == sorted(files)
    assert paths.filter_files_content_types(["a.png", "b.webp", "c.mp4", "d.wav", "e.txt"],
                                            ["image", "audio"]) == ["a.png", "b.webp", "d.wav"]


def test_recursive_search_survives_symlink_loops(tmp_path):
    touch(tmp_path / "root" / "m.pt")
    (tmp_path / "root" / "loop").symlink_to(tmp_path / "root")
    files, mtimes = paths.recursive_search(str(tmp_path / "root"))
    assert "m.pt" in files and str(tmp_path / "root") in mtimes
    assert paths.recursive_search(str(tmp_path / "absent")) == ([], {})


def test_paths_follow_the_environment_when_not_configured(tmp_path):
    code = "import comfy.paths as folder_paths; print(folder_paths.models_dir); print(folder_paths.get_output_directory())"
    env = {key: value for key, value in os.environ.items() if not key.startswith("COMFYUI_")}
    env.update(COMFYUI_BASE_DIRECTORY=str(tmp_path / "base"), COMFYUI_OUTPUT_DIRECTORY=str(tmp_path / "out"))
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(tmp_path / "base" / "models"), str(tmp_path / "out")]
