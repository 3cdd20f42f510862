"""Mask nodes: conversions, crops, composites, feathering, growing, thresholds and masked pasting."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from comfy import paths
from comfyui_core_nodes import nodes_image, nodes_mask


def test_mask_image_round_trip():
    mask = torch.rand(2, 5, 7)
    image = nodes_mask.MaskToImage.execute(mask)[0]
    assert image.shape == (2, 5, 7, 3)
    assert torch.equal(nodes_mask.ImageToMask.execute(image, "green")[0], mask)


def test_solid_invert_threshold_and_crop():
    solid = nodes_mask.SolidMask.execute(0.25, 6, 4)[0]
    assert solid.shape == (1, 4, 6) and torch.all(solid == 0.25)
    assert torch.all(nodes_mask.InvertMask.execute(solid)[0] == 0.75)
    ramp = torch.linspace(0, 1, 10).reshape(1, 1, 10)
    assert nodes_mask.ThresholdMask.execute(ramp, 0.5)[0].tolist() == [[[0.0] * 5 + [1.0] * 5]]
    cropped = nodes_mask.CropMask.execute(torch.arange(36.0).reshape(6, 6), 1, 2, 3, 2)[0]
    assert cropped.tolist() == [[[13.0, 14.0, 15.0], [19.0, 20.0, 21.0]]]


def test_color_to_mask():
    image = torch.zeros(1, 2, 2, 3)
    image[0, 0, 0] = torch.tensor([1.0, 0.5, 0.0])
    mask = nodes_mask.ImageColorToMask.execute(image, (255 << 16) + (128 << 8))[0]
    assert mask.tolist() == [[[1.0, 0.0], [0.0, 0.0]]]


@pytest.mark.parametrize("operation,expected", [("multiply", 0.1875), ("add", 1.0), ("subtract", 0.5),
                                                ("and", 0.0), ("or", 1.0), ("xor", 1.0)])
def test_mask_composite_operations(operation, expected):
    # Logical operations round first: 0.75 is on, 0.25 is off.
    destination = torch.full((1, 4, 4), 0.75)
    source = torch.full((1, 2, 2), 0.25)
    out = nodes_mask.MaskComposite.execute(destination, source, 1, 1, operation)[0]
    assert out[0, 1:3, 1:3].flatten().tolist() == pytest.approx([expected] * 4)
    assert out[0, 0, 0].item() == 0.75  # outside the source, untouched


def test_mask_composite_clips_a_source_overhanging_the_edge():
    out = nodes_mask.MaskComposite.execute(torch.zeros(1, 4, 4), torch.ones(1, 3, 3), 2, 2, "add")[0]
    assert out.sum().item() == 4.0


def test_feather_mask_ramps_the_edges():
    out = nodes_mask.FeatherMask.execute(torch.ones(1, 8, 8), 4, 0, 0, 0)[0]
    assert out[0, 0, :5].tolist() == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])


def test_grow_mask_dilates_and_erodes_with_tapered_corners():
    mask = torch.zeros(1, 7, 7)
    mask[0, 3, 3] = 1.0
    cross = nodes_mask.GrowMask.execute(mask, 1, True)[0]
    assert cross[0, 2:5, 2:5].tolist() == [[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]]
    square = nodes_mask.GrowMask.execute(mask, 1, False)[0]
    assert square[0, 2:5, 2:5].sum().item() == 9.0
    assert torch.equal(nodes_mask.GrowMask.execute(square, -1, False)[0], mask)
    assert torch.equal(nodes_mask.GrowMask.execute(mask, 0, True)[0], mask)


def test_image_composite_masked_pastes_through_the_mask():
    destination = torch.zeros(1, 4, 4, 3)
    source = torch.ones(1, 2, 2, 4)  # RGBA source: its alpha is dropped to match
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    out = nodes_mask.ImageCompositeMasked.execute(destination, source, 1, 1, False, mask)[0]
    assert out.shape == (1, 4, 4, 3)
    assert out[0, 1:3, 1, 0].tolist() == [1.0, 1.0] and out[0, 1:3, 2, 0].tolist() == [0.0, 0.0]
    assert torch.count_nonzero(destination) == 0  # the input is not changed


def test_latent_composite_masked_works_in_latent_pixels():
    destination = {"samples": torch.zeros(1, 4, 8, 8), "batch_index": [3]}
    source = {"samples": torch.ones(1, 4, 2, 2)}
    out = nodes_mask.LatentCompositeMasked.execute(destination, source, 16, 8, False)[0]
    assert out["batch_index"] == [3]
    assert out["samples"][0, 0, 1:3, 2:4].sum().item() == 4.0 and out["samples"].sum().item() == 16.0


def test_load_image_alpha_feeds_an_inpainting_mask(tmp_path):
    state = paths.FolderPaths.for_bases(str(tmp_path))
    paths.set_state(state)
    try:
        os.makedirs(state.input_directory, exist_ok=True)
        pixels = np.full((8, 8, 4), 255, dtype=np.uint8)
        pixels[2:4, 2:4, 3] = 0
        Image.fromarray(pixels, "RGBA").save(os.path.join(state.input_directory, "hole.png"))
        _, mask = nodes_image.LoadImage().load_image("hole.png")
        grown = nodes_mask.GrowMask.execute(mask, 1, False)[0]
        assert mask.sum().item() == 4.0 and grown.sum().item() == 16.0
    finally:
        paths.set_state(None)


def test_mask_preview_saves_a_temp_image(tmp_path):
    state = paths.FolderPaths.for_bases(str(tmp_path))
    paths.set_state(state)
    try:
        os.makedirs(state.temp_directory, exist_ok=True)
        result = nodes_mask.MaskPreview.execute(torch.ones(1, 4, 4))
        (entry,) = result.ui["images"]
        assert os.path.exists(os.path.join(state.temp_directory, entry["filename"]))
    finally:
        paths.set_state(None)
