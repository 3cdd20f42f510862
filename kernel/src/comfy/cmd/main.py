"""The ``comfyui`` command: parse configuration, then list plugins, run workflows, or serve."""
from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any, Iterator, Optional, Sequence

from comfy.cli_args_types import Configuration

logger = logging.getLogger("comfyui")

SERVER_MISSING = (
    "comfyui has no server plugin installed, so there is nothing to serve.\n"
    "Install one (from a checkout: pip install -e plugins/server), or run workflows without a server:\n"
    "  comfyui --workflows workflow_api.json")


def configure_logging(configuration: Configuration) -> None:
    level = str(getattr(configuration, "logging_level", "INFO") or "INFO").upper()
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def read_workflows(sources: Sequence[str]) -> Iterator[tuple[str, Any]]:
    """Each named file (``-`` is standard input) as (name, decoded JSON); bad JSON names its source."""
    for source in sources:
        if source == "-":
            text, name = sys.stdin.read(), "<stdin>"
        else:
            with open(source, encoding="utf-8") as handle:
                text, name = handle.read(), source
        try:
            workflow = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{name} is not valid JSON: {exc}") from exc
        if isinstance(workflow, dict) and "nodes" in workflow and "links" in workflow:
            raise ValueError(f"{name} is a UI-format workflow; export it with 'Export (API)' and run that file")
        yield name, workflow


async def run_workflows(configuration: Configuration, sources: Sequence[str]) -> int:
    """Run each workflow in turn, printing one JSON line of outputs each; stop at the first failure."""
    from comfy.client.embedded_comfy_client import Comfy
    from comfy.graph import PromptValidationError
    from comfy.transport import PromptExecutionError

    async with Comfy(configuration) as client:
        try:
            for name, workflow in read_workflows(sources):
                try:
                    outputs = await client.queue_prompt(workflow)
                except PromptValidationError as exc:
                    print(json.dumps(exc.body), flush=True)
                    logger.error("%s is not a valid prompt: %s", name, exc)
                    return 1
                except PromptExecutionError as exc:
                    print(json.dumps({"error": exc.payload}, default=str), flush=True)
                    logger.error("%s failed: %s", name, exc)
                    return 1
                print(json.dumps(outputs, default=str), flush=True)
        except (OSError, ValueError) as exc:
            logger.error("%s", exc)
            return 1
    return 0


def list_plugins_text(pm: Any) -> str:
    from comfy.plugins import list_plugins

    lines = []
    for info in list_plugins(pm):
        origin = f"{info.distribution} {info.version}" if info.distribution else "registered in-process"
        lines.append(f"{info.name}\t{origin}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from comfy import cli_args
    from comfy.configuration import disabled_plugins, parse_configuration
    from comfy.plugins import create_plugin_manager, set_plugin_manager

    pm = create_plugin_manager(disabled_plugins(argv))
    set_plugin_manager(pm)
    configuration = parse_configuration(argv, pm)
    cli_args.set_configuration(configuration)
    configure_logging(configuration)
    if getattr(configuration, "list_plugins", False):
        print(list_plugins_text(pm))
        return 0
    if getattr(configuration, "create_directories", False):
        from comfy import paths

        paths.configure_paths(configuration)  # creates the folders when the option is set
        return 0
    workflows = getattr(configuration, "workflows", None)
    if workflows:
        return asyncio.run(run_workflows(configuration, workflows))
    code = pm.hook.comfyui_serve(configuration=configuration)
    if code is None:
        print(SERVER_MISSING, file=sys.stderr)
        return 2
    return int(code)


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
