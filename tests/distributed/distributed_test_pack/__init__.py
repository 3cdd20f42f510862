"""A vanilla custom node pack for the distributed tests: no torch; nodes that report where they ran."""
import os
import time

import folder_paths
from comfy.execution_context import current_execution, throw_exception_if_processing_interrupted
from comfy.progress import ProgressBar

INT = ("INT", {"default": 0, "min": -(10 ** 9), "max": 10 ** 9})


def _log(kind: str) -> None:
    """One line per start and end of a DistWork run, in the shared output folder: who ran what."""
    context = current_execution()
    with open(os.path.join(folder_paths.get_output_directory(), "dist_runs.log"), "a", encoding="utf-8") as log:
        log.write(f"{kind} {context.prompt_id if context else '-'} {os.getpid()}\n")


class DistWork:
    """Works for ``seconds`` in ``steps`` progress steps (with a preview each step when asked), interruptibly."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": INT, "seconds": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 60.0}),
                             "steps": ("INT", {"default": 2, "min": 1, "max": 1000})},
                "optional": {"preview": ("BOOLEAN", {"default": False})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "distributed tests"

    def run(self, value, seconds, steps, preview=False):
        _log("start")
        bar = ProgressBar(steps)
        started = time.monotonic()
        for step in range(steps):
            while time.monotonic() < started + seconds * (step + 1) / steps:
                throw_exception_if_processing_interrupted()
                time.sleep(0.01)
            image = None
            if preview:
                from PIL import Image
                image = ("JPEG", Image.new("RGB", (96, 48), (0, 128, 255)), 32)
            bar.update_absolute(step + 1, steps, image)
        _log("end")
        return (value,)


class DistOutput:
    """Saves an 8x8 PNG and reports the value with the process that ran it."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": INT, "filename_prefix": ("STRING", {"default": "Dist"})}}

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "distributed tests"

    def save(self, value, filename_prefix):
        from PIL import Image

        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory(), 8, 8)
        name = f"{filename}_{counter:05}_.png"
        Image.new("L", (8, 8), value % 256).save(os.path.join(folder, name))
        return {"ui": {"images": [{"filename": name, "subfolder": subfolder, "type": "output"}],
                       "value": [value], "pid": [os.getpid()], "ppid": [os.getppid()]}}


class DistFail:
    """Raises the exception named by ``kind``: a MemoryError stands for a GPU running out of memory."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": INT, "kind": (["ValueError", "MemoryError"],)}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "distributed tests"

    def run(self, value, kind):
        raise {"ValueError": ValueError, "MemoryError": MemoryError}[kind](f"DistFail was asked to fail ({value})")


NODE_CLASS_MAPPINGS = {"DistWork": DistWork, "DistOutput": DistOutput, "DistFail": DistFail}
