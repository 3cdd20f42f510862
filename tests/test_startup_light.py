"""Start-up stays light with the diffusion plugins installed: declaring their nodes imports no torch.

Each check runs in a fresh interpreter, since this test process may have imported torch already.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("comfyui_core_nodes")
pytest.importorskip("comfyui_samplers")

COMFYUI = shutil.which("comfyui", path=os.path.dirname(sys.executable)) or "comfyui"

HEAVY_MODULES = ("torch", "numpy", "PIL", "safetensors", "scipy", "torchsde")

# Starts a kernel with every installed plugin, asks each node type for its /object_info entry,
# then prints which heavy modules that imported.
REGISTRY_SCRIPT = textwrap.dedent("""
    import json, sys
    from comfy.cli_args_types import Configuration
    from comfy.nodes.object_info import node_info
    from comfy.plugins import get_plugin_manager
    from comfy.runtime import Runtime

    runtime = Runtime.start(Configuration({"base_directory": sys.argv[1]}), get_plugin_manager())
    try:
        registry = runtime.registry
        infos = {name: node_info(name, node_class, registry) for name, node_class in registry.classes.items()}
    finally:
        runtime.close()
    print(json.dumps({
        "heavy": [name for name in json.loads(sys.argv[2]) if name in sys.modules],
        "sources": sorted(set(registry.sources.values())),
        "checkpoints": infos["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0],
        "images": infos["LoadImage"]["input"]["required"]["image"][0],
        "samplers": infos["KSamplerSelect"]["input"]["required"]["sampler_name"][1]["options"],
        "count": len(infos),
    }))
""")

# A vanilla custom node reporting, from inside the run, which heavy modules the process holds.
REPORTING_NODE = textwrap.dedent(f"""
    import sys


    class LoadedModules:
        @classmethod
        def INPUT_TYPES(cls):
            return {{"required": {{"label": ("STRING", {{"default": "modules"}})}}}}

        RETURN_TYPES = ()
        FUNCTION = "run"
        OUTPUT_NODE = True

        def run(self, label):
            return {{"ui": {{label: [name for name in {HEAVY_MODULES!r} if name in sys.modules]}}}}


    NODE_CLASS_MAPPINGS = {{"LoadedModules": LoadedModules}}
""")


def _clean_environment() -> dict[str, str]:
    # COMFYUI_* settings of the developer's shell (disabled plugins, folders) must not leak in.
    return {key: value for key, value in os.environ.items() if not key.startswith("COMFYUI_")}


def _base_directory(base: Path) -> Path:
    """A base folder with a checkpoint and an input image, so loader nodes list real files."""
    (base / "models" / "checkpoints").mkdir(parents=True)
    (base / "models" / "checkpoints" / "tiny.safetensors").write_bytes(b"\0" * 16)
    (base / "input").mkdir()
    (base / "input" / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return base


def test_declaring_every_installed_node_imports_no_heavy_library(tmp_path: Path):
    base = _base_directory(tmp_path / "base")
    result = subprocess.run([sys.executable, "-c", REGISTRY_SCRIPT, str(base), json.dumps(HEAVY_MODULES)],
                            capture_output=True, text=True, env=_clean_environment(), timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["heavy"] == []
    # Sources read "plugin 'core_nodes' from comfyui-core-nodes 0.1.0".
    assert any("'core_nodes'" in source for source in report["sources"])
    assert any("'samplers'" in source for source in report["sources"])
    # The loaders' INPUT_TYPES really read the model folders (known_models may add downloadable names).
    assert "tiny.safetensors" in report["checkpoints"]
    assert report["images"] == ["photo.png"]
    assert report["samplers"][:2] == ["euler", "euler_cfg_pp"] and report["samplers"][-1] == "uni_pc_bh2"
    assert report["count"] > 100


def test_one_node_workflow_from_the_command_line_imports_no_torch(tmp_path: Path):
    (tmp_path / "custom_nodes").mkdir()
    (tmp_path / "custom_nodes" / "loaded_modules.py").write_text(REPORTING_NODE)
    workflow = tmp_path / "workflow.json"
    workflow.write_text(json.dumps({"1": {"class_type": "LoadedModules", "inputs": {"label": "heavy"}}}))
    result = subprocess.run([COMFYUI, "--cwd", str(tmp_path), "--workflows", str(workflow)], capture_output=True,
                            text=True, env=_clean_environment(), cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {"1": {"heavy": []}}


def test_legacy_custom_sampler_module_still_offers_its_guider_classes(tmp_path: Path):
    # Vanilla nodes subclass these by their comfy_extras.nodes_custom_sampler names; they load on first use.
    script = textwrap.dedent("""
        import sys
        from comfy.cli_args_types import Configuration
        from comfy.plugins import get_plugin_manager
        from comfy.runtime import Runtime

        runtime = Runtime.start(Configuration({"base_directory": sys.argv[1]}), get_plugin_manager())
        import comfy.samplers
        import comfy_extras.nodes_custom_sampler as custom_sampler

        assert issubclass(custom_sampler.Guider_Basic, comfy.samplers.CFGGuider)
        assert issubclass(custom_sampler.Guider_DualCFG, comfy.samplers.CFGGuider)
        assert custom_sampler.Noise_RandomNoise(3).seed == 3
        try:
            custom_sampler.Guider_Missing
        except AttributeError as error:
            print(error)
        runtime.close()
    """)
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                            env=_clean_environment(), timeout=120)
    assert result.returncode == 0, result.stderr
    assert "has no attribute 'Guider_Missing'" in result.stdout
