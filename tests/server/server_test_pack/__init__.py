"""A vanilla custom node pack for the server tests: small nodes, a route, a web extension, translations."""
import os
import time

from aiohttp import web

import folder_paths
from comfy.execution_context import throw_exception_if_processing_interrupted
from comfy.progress import ProgressBar
from server import PromptServer

INT = ("INT", {"default": 0, "min": -(10 ** 9), "max": 10 ** 9})


class ServerTestNumber:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": INT}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "server tests"
    DESCRIPTION = "Passes an integer on."

    def run(self, value):
        return (value,)


class ServerTestSaveImage:
    """Saves an 8x8 PNG whose grey level is ``value``, the way SaveImage reports its files."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": INT, "filename_prefix": ("STRING", {"default": "ServerTest"})},
                "optional": {"mode": (["L", "RGBA"],)}}

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "server tests"

    def save(self, value, filename_prefix, mode="L"):
        from PIL import Image

        folder, filename, counter, subfolder, _prefix = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory(), 8, 8)
        name = f"{filename}_{counter:05}_.png"
        colour = value % 256 if mode == "L" else (value % 256, 0, 0, 128)
        Image.new(mode, (8, 8), colour).save(os.path.join(folder, name))
        return {"ui": {"images": [{"filename": name, "subfolder": subfolder, "type": "output"}]}}


class ServerTestSlow:
    """Runs for ``seconds`` unless interrupted, reporting progress with a preview image."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": INT, "seconds": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 60.0})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "server tests"

    def run(self, value, seconds):
        from PIL import Image

        steps = 4
        bar = ProgressBar(steps)
        started = time.monotonic()
        for step in range(steps):
            bar.update_absolute(step + 1, steps, ("JPEG", Image.new("RGB", (600, 300), (255, 0, 0)), 64))
            while time.monotonic() < started + seconds * (step + 1) / steps:
                throw_exception_if_processing_interrupted()
                time.sleep(0.01)
        return (value,)


class ServerTestFail:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": INT}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "server tests"

    def run(self, value):
        raise ValueError(f"failing on purpose with {value}")


class ServerTestNotify:
    """Talks to the queueing client the way vanilla nodes do, through PromptServer.instance."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": "hello"})}, "hidden": {"unique_id": "UNIQUE_ID"}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "server tests"

    def run(self, text, unique_id):
        server = PromptServer.instance
        server.send_sync("server_test.notice", {"text": text, "node": unique_id}, server.client_id)
        server.send_progress_text(f"progress: {text}", unique_id, server.client_id)
        return {"ui": {"text": [text]}}


NODE_CLASS_MAPPINGS = {
    "ServerTestNotify": ServerTestNotify,
    "ServerTestNumber": ServerTestNumber,
    "ServerTestSaveImage": ServerTestSaveImage,
    "ServerTestSlow": ServerTestSlow,
    "ServerTestFail": ServerTestFail,
}
NODE_DISPLAY_NAME_MAPPINGS = {"ServerTestNumber": "Number (server tests)"}
WEB_DIRECTORY = "./web"


@PromptServer.instance.routes.get("/server_test/hello")
async def hello(request):
    return web.json_response({"hello": "world", "queue": PromptServer.instance.get_queue_info()})

