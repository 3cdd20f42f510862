"""A vanilla custom node pack for the browser test: one node that saves a small PNG as SaveImage does."""
import os

import folder_paths


class BrowserTestSaveImage:
    """Saves a 64x64 PNG of one colour to the output folder and shows it on the node."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"red": ("INT", {"default": 200, "min": 0, "max": 255}),
                             "filename_prefix": ("STRING", {"default": "BrowserTest"})}}

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "browser tests"

    def save(self, red, filename_prefix):
        from PIL import Image

        folder, filename, counter, subfolder, _prefix = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory(), 64, 64)
        name = f"{filename}_{counter:05}_.png"
        Image.new("RGB", (64, 64), (red, 40, 90)).save(os.path.join(folder, name), compress_level=4)
        return {"ui": {"images": [{"filename": name, "subfolder": subfolder, "type": "output"}]}}


NODE_CLASS_MAPPINGS = {"BrowserTestSaveImage": BrowserTestSaveImage}
NODE_DISPLAY_NAME_MAPPINGS = {"BrowserTestSaveImage": "Save a test image (browser tests)"}
