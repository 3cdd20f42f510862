"""Image nodes on real PNG files: loading with alpha as mask, saving with metadata and counters, transforms."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from comfy import hookspecs, paths, paths_plugin
from comfy.client.embedded_comfy_client import Comfy
from comfy.configuration import default_configuration
from comfy.legacy import uninstall_legacy_modules
from comfy.nodes import registry as node_registry_module
from comfy.plugins import create_plugin_manager, set_plugin_manager
from comfyui_core_nodes import image_options, nodes_image


@pytest.fixture
def folders(tmp_path):
    state = paths.FolderPaths.for_bases(str(tmp_path))
    paths.set_state(state)
    for directory in (state.input_directory, state.output_directory, state.temp_directory):
        os.makedirs(directory, exist_ok=True)
    yield state
    paths.set_state(None)


def write_rgba(path, alpha_value=128) -> np.ndarray:
    pixels = np.zeros((6, 8, 4), dtype=np.uint8)
    pixels[..., 0] = 255
    pixels[..., 1] = np.arange(8, dtype=np.uint8)[None, :] * 30
    pixels[..., 3] = alpha_value
    pixels[0, 0, 3] = 0
    Image.fromarray(pixels, "RGBA").save(path)
    return pixels


def test_load_image_gives_rgb_and_the_inverted_alpha_as_mask(folders):
    pixels = write_rgba(os.path.join(folders.input_directory, "a.png"))
    assert "a.png" in nodes_image.LoadImage.INPUT_TYPES()["required"]["image"][0]
    image, mask = nodes_image.LoadImage().load_image("a.png")
    assert image.shape == (1, 6, 8, 3) and mask.shape == (1, 6, 8)
    assert torch.allclose(image[0], torch.from_numpy(pixels[..., :3].astype(np.float32) / 255))
    # Transparent pixels are 1 in the mask: that is the part to inpaint.
    assert mask[0, 0, 0].item() == 1.0
    assert mask[0, 1, 1].item() == pytest.approx(1 - 128 / 255)


def test_load_image_without_alpha_has_an_empty_64_square_mask(folders):
    Image.new("RGB", (10, 12), (0, 0, 255)).save(os.path.join(folders.input_directory, "rgb.png"))
    image, mask = nodes_image.LoadImage().load_image("rgb.png")
    assert image.shape == (1, 12, 10, 3) and image[0, 0, 0].tolist() == [0.0, 0.0, 1.0]
    assert mask.shape == (1, 64, 64) and torch.count_nonzero(mask) == 0
    assert nodes_image.LoadImage.VALIDATE_INPUTS("missing.png") == "Invalid image file: missing.png"
    assert nodes_image.LoadImage.IS_CHANGED("rgb.png") == nodes_image.LoadImage.IS_CHANGED("rgb.png")


def test_load_image_mask_channels(folders):
    write_rgba(os.path.join(folders.input_directory, "m.png"))
    (alpha,) = nodes_image.LoadImageMask().load_image("m.png", "alpha")
    (green,) = nodes_image.LoadImageMask().load_image("m.png", "green")
    assert alpha[0, 0, 0].item() == 1.0
    assert green[0, 0, 7].item() == pytest.approx(210 / 255)


def test_save_image_names_counts_and_metadata(folders):
    images = torch.rand(2, 6, 8, 3)
    node = nodes_image.SaveImage()
    prompt = {"1": {"class_type": "SaveImage", "inputs": {}}}
    first = node.save_images(images, "run/pic", prompt=prompt, extra_pnginfo={"workflow": {"nodes": []}})
    second = node.save_images(images[:1], "run/pic")
    names = [entry["filename"] for entry in first["ui"]["images"] + second["ui"]["images"]]
    assert names == ["pic_00001_.png", "pic_00002_.png", "pic_00003_.png"]
    assert all(entry["subfolder"] == "run" and entry["type"] == "output" for entry in first["ui"]["images"])
    with Image.open(os.path.join(folders.output_directory, "run", "pic_00001_.png")) as saved:
        assert json.loads(saved.text["prompt"]) == prompt
        assert json.loads(saved.text["workflow"]) == {"nodes": []}
        assert np.array(saved).tolist() == np.clip(255.0 * images[0].numpy(), 0, 255).astype(np.uint8).tolist()


def test_preview_image_goes_to_temp_with_a_random_suffix(folders):
    result = nodes_image.PreviewImage().save_images(torch.zeros(1, 4, 4, 3))
    (entry,) = result["ui"]["images"]
    assert entry["type"] == "temp" and entry["filename"].startswith("ComfyUI_temp_")
    assert os.path.exists(os.path.join(folders.temp_directory, entry["filename"]))


def test_scale_crop_pad_invert_batch_empty():
    image = torch.rand(1, 8, 16, 3)
    (scaled,) = nodes_image.ImageScale().upscale(image, "bilinear", 32, 0, "disabled")
    assert scaled.shape == (1, 16, 32, 3)
    (by,) = nodes_image.ImageScaleBy().upscale(image, "nearest-exact", 0.5)
    assert by.shape == (1, 4, 8, 3)
    total = nodes_image.ImageScaleToTotalPixels.execute(image, "area", 0.0005, 8)[0]
    assert total.shape[1] % 8 == 0 and total.shape[2] % 8 == 0
    assert nodes_image.ImageCrop.execute(image, 4, 2, 3, 1)[0].shape == (1, 2, 4, 3)
    assert torch.equal(nodes_image.ImageInvert().invert(image)[0], 1.0 - image)
    (batch,) = nodes_image.ImageBatch().batch(image, torch.rand(1, 4, 4, 4))
    assert batch.shape == (2, 8, 16, 4) and torch.all(batch[0, ..., 3] == 1.0)
    (empty,) = nodes_image.EmptyImage().generate(3, 2, 2, 0xFF8000)
    assert empty.shape == (2, 2, 3, 3) and empty[0, 0, 0].tolist() == pytest.approx([1.0, 128 / 255, 0.0])


def test_pad_for_outpaint_feathers_the_inside_of_extended_edges():
    image = torch.rand(1, 100, 100, 3)
    padded, mask = nodes_image.ImagePadForOutpaint().expand_image(image, left=8, top=0, right=0, bottom=0,
                                                                  feathering=10)
    assert padded.shape == (1, 100, 108, 3) and torch.all(padded[:, :, :8] == 0.5)
    assert torch.all(mask[:, :, :8] == 1.0)
    # Column j of the old image is j pixels from the extended left edge: ((10 - j) / 10) ** 2.
    assert mask[0, 50, 8:18].tolist() == pytest.approx([((10 - j) / 10) ** 2 for j in range(10)])
    assert torch.all(mask[:, :, 18:] == 0.0)


def test_upscale_model_nodes_say_what_is_missing(folders):
    try:
        import spandrel  # noqa: F401
    except ImportError:
        with pytest.raises(nodes_image.SpandrelMissingError, match="spandrel"):
            nodes_image._spandrel()
    else:
        pytest.skip("spandrel is installed")


class ImageSource:
    """A tiny node of this test's plugin: a fixed gradient image."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self):
        return (torch.linspace(0, 1, 4 * 4 * 3).reshape(1, 4, 4, 3),)


class ImagePlugin:
    @hookspecs.hookimpl
    def comfyui_register_nodes(self, register):
        register("ImageSource", ImageSource)
        for name, node_class in nodes_image.NODE_CLASS_MAPPINGS.items():
            register(name, node_class, nodes_image.NODE_DISPLAY_NAME_MAPPINGS.get(name))


@pytest.fixture
def comfy_factory(tmp_path):
    made = []

    def make(*options: str) -> Comfy:
        pm = create_plugin_manager(load_entrypoints=False)
        pm.register(paths_plugin, "local_models")
        pm.register(image_options, "image_options")
        pm.register(ImagePlugin(), "image_nodes")
        configuration = default_configuration(pm)
        configuration.base_directory = str(tmp_path)
        for option in options:
            setattr(configuration, option, True)
        made.append(pm)
        return Comfy(configuration, plugin_manager=pm)

    yield make
    uninstall_legacy_modules()
    set_plugin_manager(None)
    paths.set_state(None)
    node_registry_module.set_current(None)


SAVE_PROMPT = {"1": {"class_type": "ImageSource", "inputs": {}},
               "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "api"}}}


async def test_save_image_through_the_client_writes_the_prompt(tmp_path, comfy_factory):
    async with comfy_factory() as client:
        outputs = await client.queue_prompt(SAVE_PROMPT)
    (entry,) = outputs["2"]["images"]
    assert entry["filename"] == "api_00001_.png"
    with Image.open(os.path.join(tmp_path, "output", "api_00001_.png")) as saved:
        assert json.loads(saved.text["prompt"])["2"]["class_type"] == "SaveImage"


async def test_disable_metadata_leaves_the_png_bare(tmp_path, comfy_factory):
    async with comfy_factory("disable_metadata") as client:
        await client.queue_prompt(SAVE_PROMPT)
    with Image.open(os.path.join(tmp_path, "output", "api_00001_.png")) as saved:
        assert "prompt" not in saved.text
