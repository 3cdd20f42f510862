"""Runs the parity workflows on an installed upstream ComfyUI over HTTP and records its images.

Not a test: it writes tests/diffusion/data/upstream_reference/ (one PNG per workflow, settings.json),
which test_upstream_parity.py compares our images against. Upstream ComfyUI runs as its own program
in its own environment; nothing of it is imported here.

How to run it (from the repository root, with the project's venv, which builds the model files):

    python tests/diffusion/upstream/generate_reference.py \
        --comfyui /path/to/ComfyUI --python /path/to/comfyui-venv/bin/python \
        --commit <the ComfyUI commit checked out> [--groups sd15 sd21 sdxl] [--work /tmp/upstream_parity]

The reference in this repository came from ComfyUI 0.3.64 (commit in settings.json) with torch 2.13.0
(CPU) and its requirements.txt, minus torchaudio; torchvision was a stand-in package (the only wheels at
hand were CUDA builds, whose ops do not load beside a CPU torch; ComfyUI imports it at module level only
for Stable Cascade and ACE, which no workflow here builds; the stand-in is an empty torchvision/__init__.py
and torchvision/transforms.py in site-packages). The database is in memory (--database-url sqlite:///:memory:)
and --base-directory needs a custom_nodes folder, which the script makes. For each group of workflows the script builds
the full-size random-weight files (upstream_models.py) under --work, starts
``main.py --cpu --base-directory WORK`` (plus the group's flags: --fp16-unet for SDXL), uploads the input
image through /upload/image, queues each workflow with POST /prompt, polls /history and fetches the
saved PNG through /view; then it stops that server. settings.json is updated after each workflow, so
groups can run side by side (each with its own --port and --work) and a re-run replaces only its entries.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import upstream_models  # noqa: E402
import upstream_workflows  # noqa: E402

DATA = HERE.parent / "data" / "upstream_reference"
SERVER_FLAGS = {"fp16_unet": "--fp16-unet"}


def request(url: str, payload: dict | None = None, body: bytes | None = None,
            headers: dict | None = None) -> bytes:
    if payload is not None:
        body, headers = json.dumps(payload).encode(), {"Content-Type": "application/json"}
    with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers or {}), timeout=60) as reply:
        return reply.read()


def start_server(args: argparse.Namespace, group: str, log_path: Path) -> tuple[subprocess.Popen, str]:
    (args.work / "custom_nodes").mkdir(parents=True, exist_ok=True)
    flags = [SERVER_FLAGS[name] for name, on in upstream_workflows.GROUP_OPTIONS[group].items() if on]
    command = [args.python, str(args.comfyui / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(args.port),
               "--base-directory", str(args.work), "--database-url", "sqlite:///:memory:", "--disable-auto-launch",
               *flags]
    server = subprocess.Popen(command, cwd=args.comfyui, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{args.port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"ComfyUI exited ({server.returncode}); see {log_path}")
        try:
            request(f"{url}/system_stats")
            return server, url
        except (urllib.error.URLError, ConnectionError):
            time.sleep(1)
    server.terminate()
    raise SystemExit(f"ComfyUI did not answer within 300 s; see {log_path}")


def check_choices(url: str) -> None:
    """Our workflow table must name exactly upstream's samplers and schedulers."""
    inputs = json.loads(request(f"{url}/object_info/KSampler"))["KSampler"]["input"]["required"]
    samplers, schedulers = inputs["sampler_name"][0], inputs["scheduler"][0]
    if tuple(samplers) != upstream_workflows.SAMPLERS or tuple(schedulers) != upstream_workflows.SCHEDULERS:
        raise SystemExit(f"upstream's choices differ from upstream_workflows.py: {samplers}, {schedulers}")


def upload_input(url: str, image: Path) -> None:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{image.name}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + image.read_bytes() + (
        f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue\r\n"
        f"--{boundary}--\r\n").encode()
    request(f"{url}/upload/image", body=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})


def run_workflow(url: str, workflow: upstream_workflows.Workflow) -> bytes:
    queued = json.loads(request(f"{url}/prompt", {"prompt": workflow.prompt, "client_id": "parity"}))
    prompt_id = queued["prompt_id"]
    while True:
        history = json.loads(request(f"{url}/history/{prompt_id}"))
        if prompt_id in history:
            break
        time.sleep(0.5)
    entry = history[prompt_id]
    if entry["status"]["status_str"] != "success":
        raise SystemExit(f"{workflow.name} failed upstream: {json.dumps(entry['status'])[:2000]}")
    (image,) = entry["outputs"]["save"]["images"]
    query = urllib.parse.urlencode({key: image[key] for key in ("filename", "subfolder", "type")})
    return request(f"{url}/view?{query}")


def attention_of(log_text: str) -> str:
    for line in log_text.splitlines():
        if "optimization for attention" in line or "cross attention" in line.lower():
            return line.strip()
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", type=Path, required=True, help="upstream ComfyUI's folder (main.py)")
    parser.add_argument("--python", required=True, help="the Python of upstream ComfyUI's environment")
    parser.add_argument("--commit", required=True, help="the upstream commit, recorded in settings.json")
    parser.add_argument("--work", type=Path, default=Path("/tmp/upstream_parity"), help="models, input and output")
    parser.add_argument("--port", type=int, default=8190)
    parser.add_argument("--groups", nargs="+", default=list(upstream_workflows.GROUP_MODELS),
                        choices=list(upstream_workflows.GROUP_MODELS))
    parser.add_argument("--workflows", nargs="+", choices=list(upstream_workflows.WORKFLOWS),
                        help="run only these (default: every workflow of the groups)")
    args = parser.parse_args()
    args.work = args.work.resolve()

    DATA.mkdir(parents=True, exist_ok=True)
    image = upstream_models.write_input_image(args.work)
    update_settings(lambda settings: settings.update(input_image_sha256=upstream_models.file_sha256(image)))
    for group in args.groups:
        workflows = [workflow for workflow in upstream_workflows.WORKFLOWS.values()
                     if workflow.group == group and (not args.workflows or workflow.name in args.workflows)]
        if workflows:
            run_group(args, group, workflows, image)


def update_settings(change: Callable[[dict], None]) -> None:
    """Re-read, change and write settings.json, so that groups run side by side keep each other's entries."""
    path = DATA / "settings.json"
    settings = json.loads(path.read_text()) if path.is_file() else {"files_sha256": {}, "workflows": {},
                                                                     "servers": {}}
    change(settings)
    path.write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n")


def run_group(args: argparse.Namespace, group: str, workflows: list[upstream_workflows.Workflow],
              image: Path) -> None:
    for name in upstream_workflows.GROUP_MODELS[group]:
        print(f"building {name}", flush=True)
        digest = upstream_models.file_sha256(upstream_models.write_model(name, args.work))
        update_settings(lambda settings: settings["files_sha256"].update({name: digest}))
    log_path = args.work / f"comfyui_{group}.log"
    server, url = start_server(args, group, log_path)
    try:
        stats = json.loads(request(f"{url}/system_stats"))["system"]
        check_choices(url)
        upload_input(url, image)

        def record_server(settings: dict) -> None:
            settings.update(comfyui_version=stats["comfyui_version"], comfyui_commit=args.commit,
                            torch_version=stats["pytorch_version"], python_version=stats["python_version"].split()[0])
            settings["servers"][group] = {"argv": stats["argv"][1:],
                                          "attention": attention_of(log_path.read_text(errors="replace"))}

        update_settings(record_server)
        for workflow in workflows:
            started = time.monotonic()
            (DATA / f"{workflow.name}.png").write_bytes(run_workflow(url, workflow))
            seconds = round(time.monotonic() - started, 1)
            print(f"{workflow.name}: {seconds} s", flush=True)
            update_settings(lambda settings: settings["workflows"].update(
                {workflow.name: {"group": group, "seconds": seconds}}))
    finally:
        server.terminate()
        server.wait(timeout=60)

if __name__ == "__main__":
    main()
