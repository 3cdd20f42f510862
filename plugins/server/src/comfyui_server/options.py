"""The server's command-line options, named and meaning what they do in ComfyUI."""
from __future__ import annotations

from typing import Any

# What --front-end-version means when not given: the frontend installed with comfyui-frontend-package.
DEFAULT_FRONTEND_VERSION = "comfyanonymous/ComfyUI@latest"
DEFAULT_PORT = 8188
DEFAULT_MAX_UPLOAD_SIZE_MB = 100.0
DEFAULT_MAX_QUEUE_SIZE = 65536


def add_options(parser: Any) -> None:
    """Add the server's options to the kernel's configargparse parser."""
    group = parser.add_argument_group("server")
    group.add_argument("-H", "--listen", type=str, default="127.0.0.1", metavar="IP", nargs="?", const="0.0.0.0,::",
                       help="Addresses to listen on, comma-separated (default: 127.0.0.1). Given without a value, "
                            "listens on every IPv4 and IPv6 address (0.0.0.0,::).")
    group.add_argument("--port", type=int, default=DEFAULT_PORT,
                       help="Port to listen on; 0 picks a free one.")
    group.add_argument("--enable-cors-header", type=str, default=None, metavar="ORIGIN", nargs="?", const="*",
                       help="Send CORS headers allowing this origin ('*' when given without a value).")
    group.add_argument("--max-upload-size", type=float, default=DEFAULT_MAX_UPLOAD_SIZE_MB,
                       help="Largest request body accepted, in MB; larger uploads get 413.")
    group.add_argument("--multi-user", action="store_true",
                       help="Per-user settings and user data, chosen by the Comfy-User header.")
    group.add_argument("--external-address", type=str, default=None,
                       help="Base URL this server is reached at from outside, used in URLs the API returns.")
    group.add_argument("--enable-compress-response-body", action="store_true",
                       help="Gzip JSON and text responses for clients that accept it.")
    group.add_argument("--front-end-root", type=str, default=None,
                       help="Serve the frontend from this folder instead of the installed "
                            "comfyui-frontend-package. Overrides --front-end-version.")
    group.add_argument("--front-end-version", type=str, default=DEFAULT_FRONTEND_VERSION,
                       help="Frontend to serve, as owner/repo@version. The installed comfyui-frontend-package "
                            "is used when it matches; other versions must already be unpacked under "
                            "web_custom_versions/owner_repo/version, since this server downloads nothing.")
    # Not exclusive, as in ComfyUI: a command line may add --disable-auto-launch to a config that launches.
    group.add_argument("--auto-launch", action="store_true", help="Open the frontend in the default browser.")
    group.add_argument("--disable-auto-launch", action="store_true",
                       help="Never open a browser, even with --auto-launch.")
    group.add_argument("--dont-print-server", action="store_true",
                       help="Don't print the address the server listens on.")
    group.add_argument("--max-queue-size", type=int, default=DEFAULT_MAX_QUEUE_SIZE,
                       help="Refuse new prompts while this many are waiting.")
    group.add_argument("--log-stdout", action="store_true",
                       help="Send log output to standard out instead of standard error.")
    group.add_argument("--quick-test-for-ci", action="store_true",
                       help="Load every node and the frontend, then exit: 0 when all loaded, 1 otherwise.")


__all__ = ["DEFAULT_FRONTEND_VERSION", "DEFAULT_MAX_QUEUE_SIZE", "DEFAULT_MAX_UPLOAD_SIZE_MB", "DEFAULT_PORT",
           "add_options"]
