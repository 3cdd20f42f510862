"""The ``distributed`` plugin: its options, the frontend transport, and ``comfyui --distributed-queue-worker``.

Only the options live here; the AMQP client is imported when a frontend or worker starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional

from comfy.hookspecs import hookimpl

if TYPE_CHECKING:
    import configargparse

    from comfy.cli_args_types import Configuration
    from comfy.nodes.registry import NodeRegistry
    from comfy.transport import Transport

DEFAULT_CONNECTION_URI = "amqp://guest:guest@127.0.0.1"
DEFAULT_QUEUE_NAME = "comfyui"
EXECUTOR_FACTORIES = ("ThreadPoolExecutor", "ProcessPoolExecutor")


@dataclass(frozen=True)
class Settings:
    """This plugin's options, read from a configuration."""
    connection_uri: str = DEFAULT_CONNECTION_URI
    queue_name: str = DEFAULT_QUEUE_NAME
    worker: bool = False
    frontend: bool = False
    executor_factory: str = "ThreadPoolExecutor"
    panic_when: tuple[str, ...] = ()

    @classmethod
    def from_configuration(cls, configuration: Mapping[str, Any]) -> "Settings":
        def option(name: str, default: Any) -> Any:
            value = configuration.get(name)
            return default if value is None else value

        return cls(connection_uri=str(option("distributed_queue_connection_uri", DEFAULT_CONNECTION_URI)),
                   queue_name=str(option("distributed_queue_name", DEFAULT_QUEUE_NAME)),
                   worker=bool(option("distributed_queue_worker", False)),
                   frontend=bool(option("distributed_queue_frontend", False)),
                   executor_factory=str(option("executor_factory", "ThreadPoolExecutor")),
                   panic_when=tuple(option("panic_when", ())))

    def panics_on(self, exception_type: Optional[str]) -> bool:
        """Whether a prompt that failed with ``exception_type`` (``module.Qualname``) must stop the worker.

        A configured name matches the full name, or the class name alone when it has no module.
        """
        if not exception_type:
            return False
        short = exception_type.rsplit(".", 1)[-1]
        return any(name == exception_type or ("." not in name and name == short) for name in self.panic_when)


@hookimpl
def comfyui_add_options(parser: "configargparse.ArgParser") -> None:
    from comfy.configuration import ListAction

    group = parser.add_argument_group("distributed queue")
    group.add_argument("--distributed-queue-connection-uri", default=DEFAULT_CONNECTION_URI, metavar="URI",
                       help="AMQP URI of the broker (RabbitMQ) that frontends and workers share, amqp:// or "
                            "amqps:// for TLS. Example: amqp://guest:guest@127.0.0.1")
    group.add_argument("--distributed-queue-worker", action="store_true",
                       help="Run as a worker: take prompts from the distributed queue and run them here "
                            "(what comfyui-worker does).")
    group.add_argument("--distributed-queue-frontend", action="store_true",
                       help="Serve the web UI and API, sending prompts to the distributed queue for workers "
                            "to run, and relaying their progress to clients.")
    group.add_argument("--distributed-queue-name", default=DEFAULT_QUEUE_NAME, metavar="NAME",
                       help="Name of the queue frontends and workers exchange prompts on. Progress is routed "
                            "as NAME.<client id>; other queues and exchanges are named NAME.<something>.")
    group.add_argument("--executor-factory", default="ThreadPoolExecutor", choices=EXECUTOR_FACTORIES,
                       help="How a distributed worker runs prompts: ThreadPoolExecutor (default) runs them in "
                            "this process, keeping caches between prompts; ProcessPoolExecutor runs each in a "
                            "child process whose exit frees all its memory, GPU memory included.")
    group.add_argument("--panic-when", nargs="+", action=ListAction, default=[], metavar="EXCEPTION",
                       help="Fully qualified exception class names (e.g. torch.cuda.OutOfMemoryError) that make a "
                            "worker report the error and exit with status 1, for its supervisor to restart it. "
                            "Repeatable or comma-separated.")


@hookimpl
def comfyui_make_transport(configuration: "Configuration", registry: "NodeRegistry") -> Optional["Transport"]:
    settings = Settings.from_configuration(configuration)
    if not settings.frontend:
        return None
    from comfyui_distributed.frontend import DistributedFrontendTransport

    return DistributedFrontendTransport(registry, configuration, settings)


@hookimpl(tryfirst=True)
def comfyui_serve(configuration: "Configuration") -> Optional[int]:
    """``comfyui --distributed-queue-worker`` is a worker; with ``--distributed-queue-frontend`` too, a
    frontend server that also runs prompts (see ``DistributedFrontendTransport``)."""
    settings = Settings.from_configuration(configuration)
    if not settings.worker or settings.frontend:
        return None
    from comfyui_distributed.worker import run_worker

    return run_worker(configuration)


__all__ = ["Settings", "comfyui_add_options", "comfyui_make_transport", "comfyui_serve"]
