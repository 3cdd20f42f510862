"""Upscale models through spandrel: tiny random-weight ESRGAN, Real-ESRGAN, Compact and SwinIR files in their
released layouts, loaded and run by UpscaleModelLoader and ImageUpscaleWithModel, checked against spandrel itself.

spandrel needs torchvision, which the main test environment lacks; tox's ``upscale`` environment runs this module.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

spandrel = pytest.importorskip("spandrel")

from spandrel.architectures.Compact import Compact  # noqa: E402
from spandrel.architectures.ESRGAN import ESRGAN  # noqa: E402
from spandrel.architectures.LaMa import LaMa  # noqa: E402
from spandrel.architectures.SwinIR import SwinIR  # noqa: E402

import fixtures  # noqa: E402
from comfy import paths  # noqa: E402
from comfy.nodes.object_info import object_info  # noqa: E402
from comfy.transport import PromptExecutionError  # noqa: E402
from comfyui_core_nodes.loading import ModelFileError  # noqa: E402
from comfyui_core_nodes.nodes_image import ImageUpscaleWithModel, UpscaleModelLoader  # noqa: E402

# basicsr's RRDBNet names (Real-ESRGAN's releases) for the old ESRGAN keys of a 4x-internal network.
NEW_ESRGAN_NAMES = (
    (r"^model\.0\.", "conv_first."),
    (r"^model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.", r"body.\1.rdb\2.conv\3."),
    (r"^model\.1\.sub\.\d+\.", "conv_body."),
    (r"^model\.3\.", "conv_up1."),
    (r"^model\.6\.", "conv_up2."),
    (r"^model\.8\.", "conv_hr."),
    (r"^model\.10\.", "conv_last."),
)


def built(architecture: type, seed: int, **options: object) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return architecture(**options).state_dict()


def esrgan(seed: int, channels: int = 3, unshuffle: int = 1) -> dict[str, torch.Tensor]:
    """A one-block, 8-filter ESRGAN in the original ``model.N`` layout (4x, or 4x/unshuffle)."""
    sd = built(ESRGAN, seed, in_nc=channels * unshuffle ** 2, out_nc=channels, num_filters=8, num_blocks=1,
               scale=4, shuffle_factor=unshuffle if unshuffle > 1 else None)
    last_bias = max((key for key in sd if key.endswith(".bias")), key=lambda key: int(key.split(".")[1]))
    # Random weights give outputs around 0; centred, fewer are clamped and the comparisons see more.
    sd[last_bias] += 0.5
    return sd


def new_esrgan_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in sd.items():
        for pattern, replacement in NEW_ESRGAN_NAMES:
            new_key, found = re.subn(pattern, replacement, key)
            if found:
                renamed[new_key] = value
                break
    assert len(renamed) == len(sd)
    return renamed


def lama_of_nothing() -> dict[str, torch.Tensor]:
    """LaMa (an inpainting model) in its release's generator.* keys, every tensor a view of one stored zero so
    that the file stays small."""
    with torch.device("meta"):
        shapes = {key: (value.shape, value.dtype) for key, value in LaMa(in_nc=4, out_nc=3).state_dict().items()}
    return {f"generator.{key.removeprefix('model.')}": torch.zeros((), dtype=dtype).expand(shape)
            for key, (shape, dtype) in shapes.items()}


def write(folder: Path, name: str, contents: dict) -> None:
    if name.endswith(".safetensors"):
        fixtures.save_state_dict(contents, folder / name)
    else:
        torch.save(contents, folder / name)


ESRGAN_OLD = esrgan(seed=1)
SWINIR = built(SwinIR, 4, img_size=32, embed_dim=12, depths=[1], num_heads=[2], window_size=8, upscale=2,
               upsampler="pixelshuffledirect", resi_connection="1conv")
# File name -> (contents as released, scale). Real-ESRGAN wraps its weights in params_ema (the x4plus and x2plus
# RRDBNets, x2 unshuffling its input) or params (the compact SRVGGNet); SwinIR's training saves "module." keys.
MODELS = {
    "4x_esrgan_old.pth": (ESRGAN_OLD, 4),
    "4x_esrgan_old.safetensors": (ESRGAN_OLD, 4),
    "RealESRGAN_x4plus.pth": ({"params_ema": new_esrgan_layout(esrgan(seed=2))}, 4),
    "4x_esrgan_new.safetensors": (new_esrgan_layout(ESRGAN_OLD), 4),
    "RealESRGAN_x2plus.pth": ({"params_ema": new_esrgan_layout(esrgan(seed=3, unshuffle=2))}, 2),
    "realesr-general-x4v3.pth": ({"params": built(Compact, 5, num_feat=8, num_conv=2, upscale=4)}, 4),
    "001_classicalSR_DF2K_s64w8_SwinIR-M_x2.pth": ({"params": {f"module.{k}": v for k, v in SWINIR.items()}}, 2),
}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("upscale")
    folder = fixtures.models_folder(base, "upscale_models")
    for name, (contents, _scale) in MODELS.items():
        write(folder, name, contents)
    write(folder, "4x_rgba_esrgan.pth", esrgan(seed=6, channels=4))
    write(folder, "sd_vae.safetensors", fixtures.vae_state_dict(prefix=""))
    write(folder, "big-lama.pth", lama_of_nothing())
    (base / "input").mkdir()
    return base


@pytest.fixture
def folders(base):
    paths.set_state(paths.FolderPaths.for_bases(str(base)))
    yield base
    paths.set_state(None)


def spandrel_upscale(base: Path, name: str, image: torch.Tensor) -> torch.Tensor:
    """The reference: spandrel reads the file itself and upscales each image whole, with no tiling."""
    model = spandrel.ModelLoader().load_from_file(base / "models" / "upscale_models" / name)
    pixels = image.movedim(-1, 1)
    return torch.cat([model(pixels[i:i + 1]) for i in range(len(pixels))]).movedim(1, -1)


def upscale(name: str, image: torch.Tensor) -> torch.Tensor:
    model = UpscaleModelLoader.execute(name)[0]
    return ImageUpscaleWithModel.execute(model, image)[0]


def upscale_prompt(model_name: str, image_name: str) -> dict:
    return {
        "image": {"class_type": "LoadImage", "inputs": {"image": image_name}},
        "model": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": model_name}},
        "upscale": {"class_type": "ImageUpscaleWithModel",
                    "inputs": {"upscale_model": ["model", 0], "image": ["image", 0]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["upscale", 0], "filename_prefix": "up"}},
    }


# What ComfyUI's /object_info gives for the two nodes (comfy_extras/nodes_upscale_model.py, schema nodes).
SCHEMA_NODE = {"output_is_list": [False], "output_tooltips": [None], "output_node": False, "description": "",
               "python_module": "comfy_extras.nodes_upscale_model"}
OBJECT_INFO = {
    "UpscaleModelLoader": {
        **SCHEMA_NODE, "input_order": {"required": ["model_name"]}, "output": ["UPSCALE_MODEL"],
        "output_name": ["UPSCALE_MODEL"], "display_name": "Load Upscale Model", "category": "loaders"},
    "ImageUpscaleWithModel": {
        **SCHEMA_NODE, "input": {"required": {"upscale_model": ["UPSCALE_MODEL", {}], "image": ["IMAGE", {}]}},
        "input_order": {"required": ["upscale_model", "image"]}, "output": ["IMAGE"], "output_name": ["IMAGE"],
        "display_name": "Upscale Image (using Model)", "category": "image/upscaling"},
}


async def test_workflows_upscale_like_spandrel_and_object_info_is_comfyuis(base):
    source = (fixtures.image(56, 40) * 255).to(torch.uint8).numpy()
    Image.fromarray(source[0]).save(base / "input" / "small.png")
    loaded = torch.from_numpy(source.astype(np.float32) / 255)
    try:
        async with fixtures.core_comfy(base) as client:
            info = json.loads(json.dumps(object_info(client.runtime.registry)))
            for name, (_contents, scale) in MODELS.items():
                outputs = await client.queue_prompt(upscale_prompt(name, "small.png"))
                (entry,) = outputs["save"]["images"]
                with Image.open(os.path.join(base, "output", entry["subfolder"], entry["filename"])) as saved:
                    ours = np.array(saved).astype(np.int16)
                assert ours.shape == (56 * scale, 40 * scale, 3), name
                # SaveImage truncates 255 * value to 8 bits; float noise may tip a value over an integer.
                expected = (spandrel_upscale(base, name, loaded)[0].numpy() * 255).clip(0, 255).astype(np.int16)
                assert np.abs(ours - expected).max() <= 1, name
                assert expected.std() > 10, name  # the random model's output is not flat
            # A tall image is upscaled in two tiles, each a step of the node's progress.
            Image.fromarray(np.zeros((600, 24, 3), dtype=np.uint8)).save(base / "input" / "tall.png")
            task = client.queue_with_progress(upscale_prompt("realesr-general-x4v3.pth", "tall.png"))
            progress = [note.data for note in [n async for n in task.progress()] if note.event == "progress"]
            await task
            assert [(entry["value"], entry["max"]) for entry in progress if entry["node"] == "upscale"] == [
                (1, 2), (2, 2)]
            with pytest.raises(PromptExecutionError, match="sd_vae.safetensors is not an upscale model"):
                await client.queue_prompt(upscale_prompt("sd_vae.safetensors", "small.png"))
            with pytest.raises(PromptExecutionError, match="big-lama.pth is a LaMa model for inpainting, not a "
                                                           "single-image upscale model"):
                await client.queue_prompt(upscale_prompt("big-lama.pth", "small.png"))
    finally:
        fixtures.stop_kernel()
    for name, expected in OBJECT_INFO.items():
        for key, value in expected.items():
            assert info[name][key] == value, (name, key)
    files = sorted(os.listdir(base / "models" / "upscale_models"))
    assert info["UpscaleModelLoader"]["input"] == {
        "required": {"model_name": ["COMBO", {"multiselect": False, "options": files}]}}


def test_old_and_new_esrgan_layouts_and_file_formats_upscale_alike(folders):
    image = fixtures.image(24, 20, seed=3)
    old = upscale("4x_esrgan_old.pth", image)
    assert torch.equal(old, upscale("4x_esrgan_old.safetensors", image))
    assert torch.allclose(old, spandrel_upscale(folders, "4x_esrgan_old.pth", image), atol=1e-6)
    assert torch.allclose(upscale("4x_esrgan_new.safetensors", image), old, atol=1e-6)


@pytest.mark.parametrize("name", ["4x_esrgan_old.pth", "realesr-general-x4v3.pth"])
def test_an_image_larger_than_a_tile_is_upscaled_in_blended_tiles(folders, name):
    # 600 rows: tiles of 512 rows at 0 and 480, overlapping on input rows 480..511.
    image = fixtures.image(600, 24, seed=4)
    ours = upscale(name, image)
    whole = spandrel_upscale(folders, name, image)
    assert ours.shape == whole.shape == (1, 2400, 96, 3)
    # Both networks see less than 32 input pixels around a pixel, so outside the overlap a tile's output is
    # the whole image's; inside it the tiles lack each other's context and their blend only approximates it.
    overlap = slice(480 * 4, 512 * 4)
    outside = torch.ones(2400, dtype=torch.bool)
    outside[overlap] = False
    assert torch.allclose(ours[:, outside], whole[:, outside], atol=1e-5)
    seam_error = (ours[:, overlap] - whole[:, overlap]).abs()
    assert 0 < seam_error.mean() < 1e-3 and seam_error.max() < 0.01


def test_a_batch_is_upscaled_image_by_image(folders):
    batch = torch.cat([fixtures.image(20, 28, seed=seed) for seed in (7, 8)])
    ours = upscale("RealESRGAN_x2plus.pth", batch)
    assert ours.shape == (2, 40, 56, 3)
    assert torch.allclose(ours, spandrel_upscale(folders, "RealESRGAN_x2plus.pth", batch), atol=1e-6)


def test_rgba_images_need_a_four_channel_model(folders):
    rgba = torch.cat([fixtures.image(16, 12, seed=9), torch.linspace(0, 1, 16 * 12).reshape(1, 16, 12, 1)], -1)
    ours = upscale("4x_rgba_esrgan.pth", rgba)
    assert ours.shape == (1, 64, 48, 4)
    assert torch.allclose(ours, spandrel_upscale(folders, "4x_rgba_esrgan.pth", rgba), atol=1e-6)
    with pytest.raises(ValueError, match="This ESRGAN upscale model takes images with 3 channels; the image has 4"):
        upscale("4x_esrgan_old.pth", rgba)


def test_files_that_are_not_upscale_models_are_refused(folders):
    with pytest.raises(ModelFileError, match="^sd_vae.safetensors is not an upscale model of any architecture "
                                             "spandrel"):
        UpscaleModelLoader.execute("sd_vae.safetensors")
    with pytest.raises(ModelFileError, match="^big-lama.pth is a LaMa model for inpainting"):
        UpscaleModelLoader.execute("big-lama.pth")
