"""The ``comfyui`` command as users run it: real subprocesses, real files, a real installed plugin."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

COMFYUI = shutil.which("comfyui", path=os.path.dirname(sys.executable)) or "comfyui"

PLUGIN_MODULE = textwrap.dedent('''
    """A plugin installed as its own distribution, as third parties ship them."""
    from comfy.hookspecs import hookimpl


    class Multiply:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"value": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0}),
                                 "factor": ("INT", {"default": 2, "min": 0, "max": 10})}}
        RETURN_TYPES = ("FLOAT",)
        FUNCTION = "run"

        def run(self, value, factor):
            return (value * factor,)


    class Show:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"value": ("FLOAT",)}}
        RETURN_TYPES = ()
        FUNCTION = "run"
        OUTPUT_NODE = True

        def run(self, value):
            if value < 0:
                raise ValueError("negative values cannot be shown")
            return {"ui": {"value": [value]}}


    @hookimpl
    def comfyui_register_nodes(register):
        register("Multiply", Multiply)
        register("Show", Show)


    @hookimpl
    def comfyui_add_options(parser):
        parser.add_argument("--demo-level", type=int, default=3, help="How much demo to show.")
''')


@pytest.fixture
def plugin_path(tmp_path: Path) -> Path:
    """A folder holding an installed distribution `demo-plugin` with a comfyui.plugins entry point."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "demo_plugin.py").write_text(PLUGIN_MODULE)
    dist_info = site / "demo_plugin-1.2.3.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: demo-plugin\nVersion: 1.2.3\n")
    (dist_info / "entry_points.txt").write_text("[comfyui.plugins]\ndemo = demo_plugin\n")
    return site


def run_comfyui(*args: str, cwd: Path, site: Path | None = None, stdin: str | None = None,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("COMFYUI_")}
    if site is not None:
        environment["PYTHONPATH"] = str(site)
    environment.update(env or {})
    return subprocess.run([COMFYUI, "--cwd", str(cwd), *args], input=stdin, capture_output=True, text=True,
                          env=environment, cwd=cwd, timeout=60)


def workflow(value: float = 7.5, factor: int = 2) -> dict:
    return {"1": {"class_type": "Multiply", "inputs": {"value": value, "factor": factor}},
            "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}


def test_workflows_print_one_json_line_each_including_stdin(tmp_path: Path, plugin_path: Path) -> None:
    first = tmp_path / "first.json"
    first.write_text(json.dumps(workflow(7.5, 2)))
    result = run_comfyui("--workflows", str(first), "-", cwd=tmp_path, site=plugin_path,
                         stdin=json.dumps(workflow(1.25, 4)))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [json.loads(line) for line in lines] == [{"2": {"value": [15.0]}}, {"2": {"value": [5.0]}}]


def test_invalid_workflow_exits_non_zero_with_comfyui_error_shape(tmp_path: Path, plugin_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(workflow(7.5, 11)))  # factor above its max of 10
    result = run_comfyui("--workflows", str(path), cwd=tmp_path, site=plugin_path)
    assert result.returncode == 1
    body = json.loads(result.stdout.splitlines()[-1])
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["node_errors"]["1"]["errors"][0]["type"] == "value_bigger_than_max"
    assert "bad.json" in result.stderr


def test_failing_node_exits_non_zero_with_execution_error(tmp_path: Path, plugin_path: Path) -> None:
    path = tmp_path / "negative.json"
    path.write_text(json.dumps(workflow(-1.0, 2)))
    result = run_comfyui("--workflows", str(path), cwd=tmp_path, site=plugin_path)
    assert result.returncode == 1
    error = json.loads(result.stdout.splitlines()[-1])["error"]
    assert error["node_id"] == "2" and error["exception_type"] == "ValueError"
    assert "negative values cannot be shown" in error["exception_message"]


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not valid JSON"),
    (json.dumps({"nodes": [], "links": []}), "UI-format workflow"),
])
def test_unreadable_workflow_files_are_named(tmp_path: Path, plugin_path: Path, content: str, message: str) -> None:
    path = tmp_path / "broken.json"
    path.write_text(content)
    result = run_comfyui("--workflows", str(path), cwd=tmp_path, site=plugin_path)
    assert result.returncode == 1
    assert message in result.stderr and "broken.json" in result.stderr


def test_missing_workflow_file_is_an_error(tmp_path: Path, plugin_path: Path) -> None:
    result = run_comfyui("--workflows", str(tmp_path / "absent.json"), cwd=tmp_path, site=plugin_path)
    assert result.returncode == 1
    assert "absent.json" in result.stderr


def test_list_plugins_names_distribution_and_version(tmp_path: Path, plugin_path: Path) -> None:
    result = run_comfyui("--list-plugins", cwd=tmp_path, site=plugin_path)
    assert result.returncode == 0, result.stderr
    rows = dict(line.split("\t") for line in result.stdout.splitlines())
    assert rows["demo"] == "demo-plugin 1.2.3"
    assert rows["local_models"].startswith("comfyui-kernel ")


def test_disabled_plugin_is_absent_with_its_nodes_and_options(tmp_path: Path, plugin_path: Path) -> None:
    listed = run_comfyui("--disable-plugins", "demo", "--list-plugins", cwd=tmp_path, site=plugin_path)
    assert "demo" not in dict(line.split("\t") for line in listed.stdout.splitlines())
    help_text = run_comfyui("--help", cwd=tmp_path, site=plugin_path, env={"COMFYUI_DISABLE_PLUGINS": "demo"})
    assert "--demo-level" not in help_text.stdout
    assert "--demo-level" in run_comfyui("--help", cwd=tmp_path, site=plugin_path).stdout
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(workflow()))
    result = run_comfyui("--disable-plugins", "demo", "--workflows", str(path), cwd=tmp_path, site=plugin_path)
    assert result.returncode == 1
    assert json.loads(result.stdout.splitlines()[-1])["error"]["type"] == "invalid_prompt"


def test_without_server_plugin_says_what_to_install(tmp_path: Path) -> None:
    result = run_comfyui("--disable-plugins", "server", cwd=tmp_path)
    assert result.returncode == 2
    assert "no server plugin" in result.stderr and "pip install" in result.stderr


def test_create_directories_creates_model_folders_and_exits(tmp_path: Path) -> None:
    result = run_comfyui("--create-directories", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for folder in ("models/checkpoints", "models/loras", "models/vae", "input", "output"):
        assert (tmp_path / folder).is_dir(), folder
