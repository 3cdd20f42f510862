"""Image nodes: loading, saving and previewing PNGs, scaling, padding, cropping, model upscaling.

IMAGE is a float tensor (batch, height, width, channels) in [0, 1]; MASK is (batch, height, width).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
from typing import TYPE_CHECKING, Any, Optional

from comfy import paths
from comfy_api.latest import io

if TYPE_CHECKING:
    import torch

MAX_RESOLUTION = 16384
UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
CROP_METHODS = ["disabled", "center"]


def _metadata_disabled() -> bool:
    """``--disable-metadata`` (added by ``image_options``)."""
    from comfy.cli_args import args

    return bool(getattr(args, "disable_metadata", False))


def _open_image(path: str) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error


def _input_images() -> list[str]:
    directory = paths.get_input_directory()
    files = [name for name in os.listdir(directory) if os.path.isfile(os.path.join(directory, name))] \
        if os.path.isdir(directory) else []
    return sorted(paths.filter_files_content_types(files, ["image"]))


def _file_hash(image: str) -> str:
    digest = hashlib.sha256()
    with open(paths.get_annotated_filepath(image), "rb") as file:
        digest.update(file.read())
    return digest.hexdigest()


def _validate_image(image: str) -> Any:
    if not paths.exists_annotated_filepath(image):
        return f"Invalid image file: {image}"
    return True


def _frames(path: str):
    """Each frame of an image file, EXIF-rotated; 16-bit 'I' images scaled to 8-bit range."""
    from PIL import ImageOps, ImageSequence

    with _open_image(path) as image:
        for frame in ImageSequence.Iterator(image):
            frame = ImageOps.exif_transpose(frame)
            if frame.mode == "I":
                frame = frame.point(lambda value: value * (1 / 255))
            yield image.format, frame


class LoadImage:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": (_input_images(), {"image_upload": True})}}

    CATEGORY = "image"
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"

    def load_image(self, image: str):
        import numpy as np
        import torch

        images, masks = [], []
        size = None
        image_format = None
        for image_format, frame in _frames(paths.get_annotated_filepath(image)):
            rgb = frame.convert("RGB")
            if size is None:
                size = rgb.size
            if rgb.size != size:
                continue  # frames of another size cannot share a batch
            images.append(torch.from_numpy(np.array(rgb).astype(np.float32) / 255.0)[None,])
            if "A" in frame.getbands():
                alpha = np.array(frame.getchannel("A")).astype(np.float32) / 255.0
                mask = 1.0 - torch.from_numpy(alpha)  # MASK is 1 where the image is transparent
            elif frame.mode == "P" and "transparency" in frame.info:
                alpha = np.array(frame.convert("RGBA").getchannel("A")).astype(np.float32) / 255.0
                mask = 1.0 - torch.from_numpy(alpha)
            else:
                mask = torch.zeros((64, 64), dtype=torch.float32, device="cpu")
            masks.append(mask.unsqueeze(0))
        if len(images) > 1 and image_format != "MPO":
            return torch.cat(images, dim=0), torch.cat(masks, dim=0)
        return images[0], masks[0]

    @classmethod
    def IS_CHANGED(cls, image):
        return _file_hash(image)

    @classmethod
    def VALIDATE_INPUTS(cls, image):
        return _validate_image(image)


class LoadImageMask:
    _color_channels = ["alpha", "red", "green", "blue"]

    @classmethod
    def INPUT_TYPES(cls):
        directory = paths.get_input_directory()
        files = sorted(name for name in os.listdir(directory) if os.path.isfile(os.path.join(directory, name))) \
            if os.path.isdir(directory) else []
        return {"required": {"image": (files, {"image_upload": True}), "channel": (cls._color_channels,)}}

    CATEGORY = "mask"
    RETURN_TYPES = ("MASK",)
    FUNCTION = "load_image"

    def load_image(self, image: str, channel: str):
        import numpy as np
        import torch
        from PIL import ImageOps

        with _open_image(paths.get_annotated_filepath(image)) as opened:
            frame = ImageOps.exif_transpose(opened)
            if frame.getbands() != ("R", "G", "B", "A"):
                if frame.mode == "I":
                    frame = frame.point(lambda value: value * (1 / 255))
                frame = frame.convert("RGBA")
            band = channel[0].upper()
            if band not in frame.getbands():
                return (torch.zeros((64, 64), dtype=torch.float32, device="cpu").unsqueeze(0),)
            mask = torch.from_numpy(np.array(frame.getchannel(band)).astype(np.float32) / 255.0)
        if band == "A":
            mask = 1.0 - mask
        return (mask.unsqueeze(0),)

    @classmethod
    def IS_CHANGED(cls, image, channel):
        return _file_hash(image)

    @classmethod
    def VALIDATE_INPUTS(cls, image):
        return _validate_image(image)


class SaveImage:
    def __init__(self):
        self.output_dir = paths.get_output_directory()
        self.type = "output"
        self.prefix_append = ""
        self.compress_level = 4

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "The images to save."}),
            "filename_prefix": ("STRING", {"default": "ComfyUI", "tooltip": "The prefix for the file to save. This "
                                           "may include formatting information such as %date:yyyy-MM-dd% or "
                                           "%Empty Latent Image.width% to include values from nodes."}),
        }, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    CATEGORY = "image"
    DESCRIPTION = "Saves the input images to your ComfyUI output directory."

    def save_images(self, images, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        import numpy as np
        from PIL import Image
        from PIL.PngImagePlugin import PngInfo

        filename_prefix += self.prefix_append
        folder, filename, counter, subfolder, _ = paths.get_save_image_path(
            filename_prefix, self.output_dir, images[0].shape[1], images[0].shape[0])
        results = []
        for batch_number, image in enumerate(images):
            pixels = np.clip(255.0 * image.float().cpu().numpy(), 0, 255).astype(np.uint8)
            metadata = None
            if not _metadata_disabled():
                metadata = PngInfo()
                if prompt is not None:
                    metadata.add_text("prompt", json.dumps(prompt))
                for key, value in (extra_pnginfo or {}).items():
                    metadata.add_text(key, json.dumps(value))
            name = f"{filename.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
            Image.fromarray(pixels).save(os.path.join(folder, name), pnginfo=metadata,
                                         compress_level=self.compress_level)
            results.append({"filename": name, "subfolder": subfolder, "type": self.type})
            counter += 1
        return {"ui": {"images": results}}


class PreviewImage(SaveImage):
    def __init__(self):
        self.output_dir = paths.get_temp_directory()
        self.type = "temp"
        # A random suffix keeps concurrent previews from overwriting each other.
        self.prefix_append = "_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
        self.compress_level = 1

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}


def _scaled(image: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    from comfyui_core_nodes import utils

    return utils.common_upscale(image.movedim(-1, 1), width, height, method, crop).movedim(1, -1)


class ImageScale:
    upscale_methods = UPSCALE_METHODS
    crop_methods = CROP_METHODS

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "upscale_method": (cls.upscale_methods,),
                             "width": ("INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
                             "height": ("INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
                             "crop": (cls.crop_methods,)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"
    CATEGORY = "image/upscaling"

    def upscale(self, image, upscale_method, width, height, crop):
        if width == 0 and height == 0:
            return (image,)
        # A zero side follows the other with the aspect ratio kept.
        if width == 0:
            width = max(1, round(image.shape[2] * height / image.shape[1]))
        elif height == 0:
            height = max(1, round(image.shape[1] * width / image.shape[2]))
        return (_scaled(image, width, height, upscale_method, crop),)


class ImageScaleBy:
    upscale_methods = UPSCALE_METHODS

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "upscale_method": (cls.upscale_methods,),
                             "scale_by": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"
    CATEGORY = "image/upscaling"

    def upscale(self, image, upscale_method, scale_by):
        width, height = round(image.shape[2] * scale_by), round(image.shape[1] * scale_by)
        return (_scaled(image, width, height, upscale_method, "disabled"),)


class ImageScaleToTotalPixels(io.ComfyNode):
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_post_processing"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            # No display name: ComfyUI's schema gives none, so the frontend shows the id.
            node_id="ImageScaleToTotalPixels", category="image/upscaling",
            inputs=[io.Image.Input("image"), io.Combo.Input("upscale_method", options=UPSCALE_METHODS),
                    io.Float.Input("megapixels", default=1.0, min=0.01, max=16.0, step=0.01),
                    io.Int.Input("resolution_steps", default=1, min=1, max=256, optional=True)],
            outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, image, upscale_method, megapixels, resolution_steps=1) -> io.NodeOutput:
        scale_by = math.sqrt(megapixels * 1024 * 1024 / (image.shape[2] * image.shape[1]))
        width = round(image.shape[2] * scale_by / resolution_steps) * resolution_steps
        height = round(image.shape[1] * scale_by / resolution_steps) * resolution_steps
        return io.NodeOutput(_scaled(image, int(width), int(height), upscale_method, "disabled"))


class ImageInvert:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "invert"
    CATEGORY = "image"

    def invert(self, image):
        return (1.0 - image,)


class ImageBatch:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image1": ("IMAGE",), "image2": ("IMAGE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "batch"
    CATEGORY = "image"

    def batch(self, image1, image2):
        import torch

        if image1.shape[-1] != image2.shape[-1]:
            # An RGB image joins an RGBA batch with an opaque alpha channel.
            if image1.shape[-1] > image2.shape[-1]:
                image2 = torch.nn.functional.pad(image2, (0, 1), mode="constant", value=1.0)
            else:
                image1 = torch.nn.functional.pad(image1, (0, 1), mode="constant", value=1.0)
        if image1.shape[1:] != image2.shape[1:]:
            image2 = _scaled(image2, image1.shape[2], image1.shape[1], "bilinear", "center")
        return (torch.cat((image1, image2), dim=0),)


class EmptyImage:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"width": ("INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}),
                             "height": ("INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}),
                             "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
                             "color": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFF, "step": 1,
                                               "display": "color"})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "generate"
    CATEGORY = "image"

    def generate(self, width, height, batch_size=1, color=0):
        import torch

        channels = [torch.full([batch_size, height, width, 1], ((color >> shift) & 0xFF) / 0xFF) for shift in (16, 8, 0)]
        return (torch.cat(channels, dim=-1),)


class ImagePadForOutpaint:
    @classmethod
    def INPUT_TYPES(cls):
        def side():
            return ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8})

        return {"required": {"image": ("IMAGE",), "left": side(), "top": side(), "right": side(), "bottom": side(),
                             "feathering": ("INT", {"default": 40, "min": 0, "max": MAX_RESOLUTION, "step": 1})}}

    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "expand_image"
    CATEGORY = "image"

    def expand_image(self, image, left, top, right, bottom, feathering):
        import torch

        batch, height, width, channels = image.size()
        padded = torch.ones((batch, height + top + bottom, width + left + right, channels), dtype=torch.float32) * 0.5
        padded[:, top:top + height, left:left + width, :] = image
        mask = torch.ones((batch, height + top + bottom, width + left + right), dtype=torch.float32)
        inner = torch.zeros((height, width), dtype=torch.float32)
        if feathering > 0 and feathering * 2 < height and feathering * 2 < width:
            # Inside the old borders that were extended, fade the mask in quadratically over `feathering`.
            rows = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width)
            cols = torch.arange(width, dtype=torch.float32)[None, :].expand(height, width)
            # Sides that were not extended count as far away (their full extent).
            distance = torch.stack([rows if top else torch.full_like(rows, height),
                                    (height - rows) if bottom else torch.full_like(rows, height),
                                    cols if left else torch.full_like(cols, width),
                                    (width - cols) if right else torch.full_like(cols, width)]).amin(0)
            ramp = (feathering - distance) / feathering
            inner = torch.where(distance < feathering, ramp * ramp, inner)
        mask[:, top:top + height, left:left + width] = inner
        return padded, mask


class ImageCrop(io.ComfyNode):
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_images"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ImageCrop", search_aliases=["trim"], display_name="Image Crop", category="image/transform",
            inputs=[io.Image.Input("image"),
                    io.Int.Input("width", default=512, min=1, max=MAX_RESOLUTION, step=1),
                    io.Int.Input("height", default=512, min=1, max=MAX_RESOLUTION, step=1),
                    io.Int.Input("x", default=0, min=0, max=MAX_RESOLUTION, step=1),
                    io.Int.Input("y", default=0, min=0, max=MAX_RESOLUTION, step=1)],
            outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, image, width, height, x, y) -> io.NodeOutput:
        x = min(x, image.shape[2] - 1)
        y = min(y, image.shape[1] - 1)
        return io.NodeOutput(image[:, y:y + height, x:x + width, :])


# --- upscale models (spandrel) --------------------------------------------------------------------
# ComfyUI declares these two in comfy_extras/nodes_upscale_model.py; /object_info names that module.
UPSCALE_MODULE = "comfy_extras.nodes_upscale_model"
UPSCALE_TILE, UPSCALE_OVERLAP, UPSCALE_MIN_TILE = 512, 32, 128


class SpandrelMissingError(RuntimeError):
    """Upscale models need the spandrel package (which needs torchvision)."""


def _spandrel() -> Any:
    try:
        import spandrel
    except ImportError as error:
        raise SpandrelMissingError(
            "Upscale models are loaded with the 'spandrel' package, which is not installed: "
            "pip install spandrel (it needs torchvision matching your torch).") from error
    return spandrel


class UpscaleModelLoader(io.ComfyNode):
    RELATIVE_PYTHON_MODULE = UPSCALE_MODULE

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UpscaleModelLoader", display_name="Load Upscale Model", category="loaders",
            inputs=[io.Combo.Input("model_name", options=paths.get_filename_list("upscale_models"))],
            outputs=[io.UpscaleModel.Output()])

    @classmethod
    def execute(cls, model_name: str) -> io.NodeOutput:
        from comfyui_core_nodes.loading import ModelFileError, load_torch_file

        spandrel = _spandrel()
        state_dict = load_torch_file(paths.get_full_path_or_raise("upscale_models", model_name), safe_load=True)
        # spandrel unwraps params/params_ema and strips a DataParallel "module." prefix itself.
        try:
            model = spandrel.ModelLoader().load_from_state_dict(state_dict).eval()
        except spandrel.UnsupportedModelError as error:
            raise ModelFileError(f"{model_name} is not an upscale model of any architecture spandrel "
                                 f"{spandrel.__version__} knows") from error
        if not isinstance(model, spandrel.ImageModelDescriptor):
            raise ModelFileError(f"{model_name} is a {model.architecture.name} model for {model.purpose.lower()}, "
                                 f"not a single-image upscale model")
        return io.NodeOutput(model)


class ImageUpscaleWithModel(io.ComfyNode):
    RELATIVE_PYTHON_MODULE = UPSCALE_MODULE

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ImageUpscaleWithModel", display_name="Upscale Image (using Model)", category="image/upscaling",
            inputs=[io.UpscaleModel.Input("upscale_model"), io.Image.Input("image")],
            outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, upscale_model: Any, image: torch.Tensor) -> io.NodeOutput:
        import torch

        from comfyui_core_nodes import model_management, utils

        if image.shape[-1] != upscale_model.input_channels:
            raise ValueError(f"This {upscale_model.architecture.name} upscale model takes images with "
                             f"{upscale_model.input_channels} channels; the image has {image.shape[-1]}")
        device = model_management.get_torch_device()
        # The weights, the image, and ComfyUI's rough allowance for one tile's activations: 384 times a
        # 512-pixel RGB tile's bytes, times the scale.
        tile_activations = UPSCALE_TILE ** 2 * 3 * image.element_size() * max(upscale_model.scale, 1.0) * 384.0
        model_management.free_memory(model_management.module_size(upscale_model.model) + tile_activations
                                     + image.nelement() * image.element_size(), device)
        upscale_model.to(device)
        pixels = image.movedim(-1, -3).to(device)
        tile = UPSCALE_TILE
        try:
            while True:
                try:
                    steps = pixels.shape[0] * utils.get_tiled_scale_steps(
                        pixels.shape[3], pixels.shape[2], tile_x=tile, tile_y=tile, overlap=UPSCALE_OVERLAP)
                    scaled = utils.tiled_scale(pixels, upscale_model, tile_x=tile, tile_y=tile,
                                               overlap=UPSCALE_OVERLAP, upscale_amount=upscale_model.scale,
                                               out_channels=upscale_model.output_channels,
                                               pbar=utils.ProgressBar(steps))
                    break
                except model_management.OOM_EXCEPTION:
                    tile //= 2
                    if tile < UPSCALE_MIN_TILE:
                        raise
        finally:
            upscale_model.to("cpu")
        return io.NodeOutput(torch.clamp(scaled.movedim(-3, -1), min=0, max=1.0))


NODE_CLASS_MAPPINGS = {
    "LoadImage": LoadImage,
    "LoadImageMask": LoadImageMask,
    "SaveImage": SaveImage,
    "PreviewImage": PreviewImage,
    "ImageScale": ImageScale,
    "ImageScaleBy": ImageScaleBy,
    "ImageScaleToTotalPixels": ImageScaleToTotalPixels,
    "ImageInvert": ImageInvert,
    "ImageBatch": ImageBatch,
    "ImagePadForOutpaint": ImagePadForOutpaint,
    "EmptyImage": EmptyImage,
    "ImageCrop": ImageCrop,
    "UpscaleModelLoader": UpscaleModelLoader,
    "ImageUpscaleWithModel": ImageUpscaleWithModel,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "SaveImage": "Save Image",
    "PreviewImage": "Preview Image",
    "LoadImage": "Load Image",
    "LoadImageMask": "Load Image (as Mask)",
    "ImageScale": "Upscale Image",
    "ImageScaleBy": "Upscale Image By",
    "ImageInvert": "Invert Image",
    "ImagePadForOutpaint": "Pad Image for Outpainting",
    "ImageBatch": "Batch Images",
}
