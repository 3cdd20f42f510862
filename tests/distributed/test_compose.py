"""docker-compose.yml and the Dockerfile name services, ports, volumes and commands that exist.

No Docker engine runs here: the files are read as data and their commands parsed by the real parser.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from comfy.configuration import make_parser
from comfy.plugins import create_plugin_manager
from distributed_helpers import BIN

ROOT = Path(__file__).resolve().parents[2]
SHARED_FOLDERS = ("models", "input", "output", "custom_nodes")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def parse(command: list[str], environment: dict[str, str]):
    """The configuration ``command`` gets, exactly as comfyui or comfyui-worker would parse it."""
    program, *arguments = command
    assert (BIN / program).is_file(), f"{program} is not a command this repository installs"
    parser = make_parser(create_plugin_manager())
    # argparse exits on an unknown option: that fails the test with the option's name.
    namespace = parser.parse_args(arguments, env_vars={key: str(value) for key, value in environment.items()})
    return program, vars(namespace)


def test_services_and_their_commands(compose: dict):
    services = compose["services"]
    assert {"rabbitmq", "frontend", "worker"} <= set(services)
    broker = services["rabbitmq"]
    assert broker["image"].startswith("rabbitmq:")
    assert any(volume.endswith(":/var/lib/rabbitmq") for volume in broker["volumes"])

    program, frontend = parse(services["frontend"]["command"], services["frontend"]["environment"])
    assert program == "comfyui" and frontend["distributed_queue_frontend"] and frontend["listen"] == "0.0.0.0"
    assert services["frontend"]["ports"] == [f"{frontend['port']}:{frontend['port']}"]

    program, worker = parse(services["worker"]["command"], services["worker"]["environment"])
    assert program == "comfyui-worker" and not worker["distributed_queue_frontend"]
    assert worker["executor_factory"] in ("ThreadPoolExecutor", "ProcessPoolExecutor")
    assert isinstance(services["worker"]["deploy"]["replicas"], int)

    for options in (frontend, worker):
        uri = urlsplit(options["distributed_queue_connection_uri"])
        # The broker is reached by its service name, on the port RabbitMQ listens on.
        assert (uri.scheme, uri.hostname, uri.port) == ("amqp", "rabbitmq", 5672)
        assert options["distributed_queue_name"] == frontend["distributed_queue_name"]
    for name in ("frontend", "worker"):
        assert services[name]["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
        assert services[name]["restart"] == "unless-stopped"


def test_frontend_and_workers_share_their_folders(compose: dict):
    services = compose["services"]
    mounts = {}
    for name in ("frontend", "worker"):
        _, options = parse(services[name]["command"], services[name]["environment"])
        targets = {}
        for volume in services[name]["volumes"]:
            source, target = volume.split(":")[:2]
            targets[target] = source
        mounts[name] = {folder: targets.get(f"{options['cwd']}/{folder}") for folder in SHARED_FOLDERS}
        assert all(mounts[name].values()), f"{name} lacks a shared folder under its --cwd: {mounts[name]}"
    # Workers write outputs where the frontend serves them, and load the nodes it validated against.
    assert mounts["frontend"] == mounts["worker"]
    assert set(compose["volumes"]) == {volume.split(":")[0] for volume in services["rabbitmq"]["volumes"]}


def test_the_dockerfile_builds_what_compose_runs(compose: dict):
    dockerfile = (ROOT / "Dockerfile").read_text()
    for name in ("frontend", "worker"):
        assert compose["services"][name]["build"] == "."
    for line in re.findall(r"^COPY (.+)$", dockerfile, re.MULTILINE):
        *sources, _ = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which is not in the repository"
    requirements = (ROOT / "requirements.txt").read_text()
    assert "-e ./plugins/distributed" in requirements and "pip install -r requirements.txt" in dockerfile
    assert re.search(r"^EXPOSE 8188$", dockerfile, re.MULTILINE)
    command = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE).group(1))
    program, options = parse(command, {})
    assert program == "comfyui" and options["port"] == 8188 and options["cwd"] == "/workspace"
    assert re.search(r"^WORKDIR /workspace$", dockerfile, re.MULTILINE)
