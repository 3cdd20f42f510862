"""The image nodes' option, kept apart from them so adding options imports no torch."""
from __future__ import annotations

from typing import TYPE_CHECKING

from comfy.hookspecs import hookimpl

if TYPE_CHECKING:
    import configargparse


@hookimpl(specname="comfyui_add_options")
def comfyui_add_image_options(parser: "configargparse.ArgParser") -> None:
    parser.add_argument("--disable-metadata", action="store_true",
                        help="Do not save the prompt and workflow in the PNG files SaveImage writes.")
