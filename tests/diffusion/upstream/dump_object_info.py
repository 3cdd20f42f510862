"""Records upstream ComfyUI's /object_info entries for the node types we also register.

Not a test: it writes tests/diffusion/data/upstream_object_info.json, which test_object_info_parity.py
compares our entries against, field by field. Upstream ComfyUI runs as its own program in its own
environment; nothing of it is imported here.

How to run it (from the repository root, with the project's venv, which knows our node types):

    python tests/diffusion/upstream/dump_object_info.py \
        --comfyui /path/to/ComfyUI --python /path/to/comfyui-venv/bin/python [--port 8199]

It starts ``main.py --cpu --base-directory TMP`` on a fresh, empty temporary base directory, so every
list that ComfyUI builds from files on disk (checkpoints, LoRAs, VAEs, input images, configs) holds only
what ComfyUI offers without any file; our test builds its entries on an empty base directory too. That
is the whole normalisation: nothing else is rewritten. It fetches GET /object_info, keeps the node types
that our core_nodes and samplers plugins register, writes them with ComfyUI's version and the names of
the shared types it could not describe (a node module that failed to import there), and stops the server.

The reference in this repository came from ComfyUI 0.3.64 with torch 2.13.0 (CPU) and a stand-in
torchvision, so comfy_extras/nodes_upscale_model.py did not import there: UpscaleModelLoader and
ImageUpscaleWithModel are not in it (tests/diffusion/test_upscale.py covers those two).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

OUTPUT = Path(__file__).resolve().parent.parent / "data" / "upstream_object_info.json"


def our_node_types() -> list[str]:
    """The node types our core_nodes and samplers plugins register, in registration order."""
    from comfy.plugins import collect, create_plugin_manager
    from comfyui_core_nodes import plugin as core_plugin
    from comfyui_samplers import plugin as samplers_plugin

    pm = create_plugin_manager(load_entrypoints=False)
    pm.register(core_plugin, "core_nodes")
    pm.register(samplers_plugin, "samplers")
    names: list[str] = []
    collect(pm, "comfyui_register_nodes", lambda source, name, node_class, display_name=None: names.append(name))
    return names


def comfyui_version(comfyui: Path) -> str:
    match = re.search(r'__version__ = "([^"]+)"', (comfyui / "comfyui_version.py").read_text())
    if match is None:
        sys.exit(f"no __version__ in {comfyui / 'comfyui_version.py'}")
    return match.group(1)


def fetch_object_info(args: argparse.Namespace, base: Path) -> dict:
    (base / "custom_nodes").mkdir(parents=True)
    command = [args.python, str(args.comfyui / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(args.port),
               "--base-directory", str(base), "--database-url", "sqlite:///:memory:", "--disable-auto-launch"]
    log_path = base / "comfyui.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, cwd=args.comfyui, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + args.start_timeout
        while True:
            if server.poll() is not None:
                sys.exit(f"ComfyUI exited with {server.returncode}; see {log_path}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{args.port}/object_info", timeout=60) as reply:
                    return json.load(reply)
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    sys.exit(f"ComfyUI did not answer within {args.start_timeout} s; see {log_path}")
                time.sleep(2)
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", type=Path, required=True, help="the ComfyUI checkout (holds main.py)")
    parser.add_argument("--python", required=True, help="the Python of ComfyUI's environment")
    parser.add_argument("--port", type=int, default=8199)
    parser.add_argument("--start-timeout", type=float, default=300.0, help="seconds to wait for the server")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    args.comfyui = args.comfyui.resolve()

    with tempfile.TemporaryDirectory(prefix="comfyui_object_info_") as base:
        upstream = fetch_object_info(args, Path(base))
    ours = our_node_types()
    reference = {
        "comfyui_version": comfyui_version(args.comfyui),
        "not_described_upstream": sorted(name for name in ours if name not in upstream),
        "nodes": {name: upstream[name] for name in sorted(ours) if name in upstream},
    }
    args.output.write_text(json.dumps(reference, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(reference['nodes'])} node types written to {args.output}; "
          f"not described upstream: {', '.join(reference['not_described_upstream']) or 'none'}")


if __name__ == "__main__":
    main()
