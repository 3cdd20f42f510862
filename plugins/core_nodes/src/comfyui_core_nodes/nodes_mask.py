"""Mask nodes: converting, cropping, combining, feathering and growing masks, and masked compositing.

MASK is a float tensor (batch, height, width), or (height, width), with 1 where the mask applies.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from comfy_api.latest import io
from comfyui_core_nodes.nodes_image import MAX_RESOLUTION, PreviewImage

if TYPE_CHECKING:
    import torch

CHANNELS = ["red", "green", "blue", "alpha"]


def _batched(mask: torch.Tensor) -> torch.Tensor:
    return mask.reshape((-1, mask.shape[-2], mask.shape[-1]))


def composite(destination: torch.Tensor, source: torch.Tensor, x: int, y: int, mask: Optional[torch.Tensor] = None,
              multiplier: int = 8, resize_source: bool = False) -> torch.Tensor:
    """Paste ``source`` into ``destination`` (both channels-first) at (x, y) pixels, through ``mask``.

    ``multiplier`` converts pixel offsets to the tensors' units (8 for latents). Parts of the
    source outside the destination are dropped. ``destination`` is changed in place and returned.
    """
    import torch

    from comfyui_core_nodes.conds import repeat_to_batch_size

    source = source.to(destination.device)
    if resize_source:
        source = torch.nn.functional.interpolate(source, size=(destination.shape[-2], destination.shape[-1]),
                                                 mode="bilinear")
    source = repeat_to_batch_size(source, destination.shape[0])
    x = max(-source.shape[-1] * multiplier, min(x, destination.shape[-1] * multiplier))
    y = max(-source.shape[-2] * multiplier, min(y, destination.shape[-2] * multiplier))
    left, top = x // multiplier, y // multiplier
    right, bottom = left + source.shape[-1], top + source.shape[-2]
    if mask is None:
        mask = torch.ones_like(source)
    else:
        mask = mask.to(destination.device, copy=True)
        mask = torch.nn.functional.interpolate(mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])),
                                               size=(source.shape[-2], source.shape[-1]), mode="bilinear")
        mask = repeat_to_batch_size(mask, source.shape[0])
    visible_width = destination.shape[-1] - left + min(0, x)
    visible_height = destination.shape[-2] - top + min(0, y)
    mask = mask[:, :, :visible_height, :visible_width]
    if mask.ndim < source.ndim:
        mask = mask.unsqueeze(1)
    source_part = mask * source[..., :visible_height, :visible_width]
    destination_part = (torch.ones_like(mask) - mask) * destination[..., top:bottom, left:right]
    destination[..., top:bottom, left:right] = source_part + destination_part
    return destination


class _MaskNode(io.ComfyNode):
    """The mask nodes, which ComfyUI defines in comfy_extras/nodes_mask.py; /object_info names that module."""
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_mask"


def _position_inputs(step: int) -> list:
    return [io.Int.Input("x", default=0, min=0, max=MAX_RESOLUTION, step=step),
            io.Int.Input("y", default=0, min=0, max=MAX_RESOLUTION, step=step)]


class LatentCompositeMasked(_MaskNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LatentCompositeMasked", search_aliases=["overlay latent", "layer latent", "paste latent",
                                                             "inpaint latent"],
            category="latent",
            inputs=[io.Latent.Input("destination"), io.Latent.Input("source"), *_position_inputs(8),
                    io.Boolean.Input("resize_source", default=False), io.Mask.Input("mask", optional=True)],
            outputs=[io.Latent.Output()])

    @classmethod
    def execute(cls, destination, source, x, y, resize_source, mask=None) -> io.NodeOutput:
        output = dict(destination)
        output["samples"] = composite(destination["samples"].clone(), source["samples"], x, y, mask, 8, resize_source)
        return io.NodeOutput(output)


def _alpha_fix(destination: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Match channel counts: drop the source's alpha, or give the destination an opaque one."""
    import torch

    if destination.shape[-1] < source.shape[-1]:
        source = source[..., :destination.shape[-1]]
    elif destination.shape[-1] > source.shape[-1]:
        destination = torch.nn.functional.pad(destination, (0, 1))
        destination[..., -1] = 1.0
    return destination, source


class ImageCompositeMasked(_MaskNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ImageCompositeMasked", search_aliases=["paste image", "overlay", "layer"], category="image",
            inputs=[io.Image.Input("destination"), io.Image.Input("source"), *_position_inputs(1),
                    io.Boolean.Input("resize_source", default=False), io.Mask.Input("mask", optional=True)],
            outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, destination, source, x, y, resize_source, mask=None) -> io.NodeOutput:
        destination, source = _alpha_fix(destination, source)
        output = composite(destination.clone().movedim(-1, 1), source.movedim(-1, 1), x, y, mask, 1, resize_source)
        return io.NodeOutput(output.movedim(1, -1))


class MaskToImage(_MaskNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="MaskToImage", search_aliases=["convert mask"], display_name="Convert Mask to Image",
                         category="mask", inputs=[io.Mask.Input("mask")], outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, mask) -> io.NodeOutput:
        return io.NodeOutput(mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).movedim(1, -1).expand(-1, -1, -1, 3))


class ImageToMask(_MaskNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="ImageToMask", search_aliases=["extract channel", "channel to mask"],
                         display_name="Convert Image to Mask", category="mask",
                         inputs=[io.Image.Input("image"), io.Combo.Input("channel", options=CHANNELS)],
                         outputs=[io.Mask.Output()])

    @classmethod
    def execute(cls, image, channel) -> io.NodeOutput:
        return io.NodeOutput(image[:, :, :, CHANNELS.index(channel)])


class ImageColorToMask(_MaskNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="ImageColorToMask", search_aliases=["color keying", "chroma key"], category="mask",
                         inputs=[io.Image.Input("image"),
                                 io.Int.Input("color", default=0, min=0, max=0xFFFFFF, step=1,
                                              display_mode=io.NumberDisplay.number)],
                         outputs=[io.Mask.Output()])

    @classmethod
    def execute(cls, image, color) -> io.NodeOutput:
        import torch

        rgb = (torch.clamp(image, 0, 1.0) * 255.0).round().to(torch.int)
        packed = (rgb[:, :, :, 0] << 16) + (rgb[:, :, :, 1] << 8) + rgb[:, :, :, 2]
        return io.NodeOutput(torch.where(packed == color, 1.0, 0).float())


class SolidMask(_MaskNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="SolidMask", category="mask",
                         inputs=[io.Float.Input("value", default=1.0, min=0.0, max=1.0, step=0.01),
                                 io.Int.Input("width", default=512, min=1, max=MAX_RESOLUTION, step=1),
                                 io.Int.Input("height", default=512, min=1, max=MAX_RESOLUTION, step=1)],
                         outputs=[io.Mask.Output()])

    @classmethod
    def execute(cls, value, width, height) -> io.NodeOutput:
        import torch

        return io.NodeOutput(torch.full((1, height, width), value, dtype=torch.float32, device="cpu"))


class InvertMask(_MaskNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="InvertMask", search_aliases=["reverse mask", "flip mask"], category="mask",
                         inputs=[io.Mask.Input("mask")], outputs=[io.Mask.Output()])

    @classmethod
    def execute(cls, mask) -> io.NodeOutput:
        return io.NodeOutput(1.0 - mask)


class CropMask(_MaskNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="CropMask", search_aliases=["cut mask", "extract mask region", "mask slice"],
                         category="mask",
                         inputs=[io.Mask.Input("mask"), *_position_inputs(1),
                                 io.Int.Input("width", default=512, min=1, max=MAX_RESOLUTION, step=1),
                                 io.Int.Input("height", default=512, min=1, max=MAX_RESOLUTION, step=1)],
                         outputs=[io.Mask.Output()])

    @classmethod
    def execute(cls, mask, x, y, width, height) -> io.NodeOutput:
        return io.NodeOutput(_batched(mask)[:, y:y + height, x:x + width])


# Binary operations treat masks as on/off after rounding.
_MASK_OPERATIONS = {
    "multiply": lambda a, b: a * b,
    "add": lambda a, b: a + b,
    "subtract": lambda a, b: a - b,
    "and": lambda a, b: (a.round().bool() & b.round().bool()).float(),
    "or": lambda a, b: (a.round().bool() | b.round().bool()).float(),
    "xor": lambda a, b: (a.round().bool() ^ b.round().bool()).float(),
}


class MaskComposite(_MaskNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="MaskComposite", search_aliases=["combine masks", "blend masks", "layer masks"],
                         category="mask",
                         inputs=[io.Mask.Input("destination"), io.Mask.Input("source"), *_position_inputs(1),
                                 io.Combo.Input("operation", options=list(_MASK_OPERATIONS))],
                         outputs=[io.Mask.Output()])

    @classmethod
    def execute(cls, destination, source, x, y, operation) -> io.NodeOutput:
        import torch

        output = _batched(destination).clone()
        source = _batched(source)
        right = min(x + source.shape[-1], destination.shape[-1])
        bottom = min(y + source.shape[-2], destination.shape[-2])
        source_part = source[:, :bottom - y, :right - x]
        output[:, y:bottom, x:right] = _MASK_OPERATIONS[operation](output[:, y:bottom, x:right], source_part)
        return io.NodeOutput(torch.clamp(output, 0.0, 1.0))


class FeatherMask(_MaskNode):
    @classmethod
    def define_schema(cls):
        def side(name):
            return io.Int.Input(name, default=0, min=0, max=MAX_RESOLUTION, step=1)

        return io.Schema(node_id="FeatherMask", search_aliases=["soft edge mask", "blur mask edges",
                                                                "gradient mask edge"],
                         category="mask",
                         inputs=[io.Mask.Input("mask"), side("left"), side("top"), side("right"), side("bottom")],
                         outputs=[io.Mask.Output()])

    @classmethod
    def execute(cls, mask, left, top, right, bottom) -> io.NodeOutput:
        output = _batched(mask).clone()
        left, right = min(left, output.shape[-1]), min(right, output.shape[-1])
        top, bottom = min(top, output.shape[-2]), min(bottom, output.shape[-2])
        for offset in range(left):
            output[:, :, offset] *= (offset + 1.0) / left
        # ComfyUI indexes the far edges with -offset, so offset 0 scales the first column/row again.
        for offset in range(right):
            output[:, :, -offset] *= (offset + 1) / right
        for offset in range(top):
            output[:, offset, :] *= (offset + 1) / top
        for offset in range(bottom):
            output[:, -offset, :] *= (offset + 1) / bottom
        return io.NodeOutput(output)


class GrowMask(_MaskNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="GrowMask", search_aliases=["expand mask", "shrink mask"], display_name="Grow Mask",
                         category="mask",
                         inputs=[io.Mask.Input("mask"),
                                 io.Int.Input("expand", default=0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, step=1),
                                 io.Boolean.Input("tapered_corners", default=True)],
                         outputs=[io.Mask.Output()])

    @classmethod
    def execute(cls, mask, expand, tapered_corners) -> io.NodeOutput:
        """Grey dilation (or erosion when negative) by a 3x3 cross (tapered) or square, ``|expand|`` times."""
        import torch

        output = _batched(mask).clone().unsqueeze(1)
        for _ in range(abs(expand)):
            # Edge padding: beyond the border the values repeat, as a mirrored border does for 3x3.
            padded = torch.nn.functional.pad(output, (1, 1, 1, 1), mode="replicate")
            neighbours = [padded[:, :, 1 + dy:1 + dy + output.shape[-2], 1 + dx:1 + dx + output.shape[-1]]
                          for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                          if not (tapered_corners and dy != 0 and dx != 0)]
            stacked = torch.stack(neighbours)
            output = stacked.amax(0) if expand > 0 else stacked.amin(0)
        return io.NodeOutput(output.squeeze(1))


class ThresholdMask(_MaskNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="ThresholdMask", search_aliases=["binary mask"], category="mask",
                         inputs=[io.Mask.Input("mask"),
                                 io.Float.Input("value", default=0.5, min=0.0, max=1.0, step=0.01)],
                         outputs=[io.Mask.Output()])

    @classmethod
    def execute(cls, mask, value) -> io.NodeOutput:
        return io.NodeOutput((mask > value).float())


class MaskPreview(_MaskNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="MaskPreview", search_aliases=["show mask", "view mask", "inspect mask", "debug mask"],
                         display_name="Preview Mask", category="mask",
                         description="Saves the input images to your ComfyUI output directory.",
                         inputs=[io.Mask.Input("mask")], hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
                         is_output_node=True)

    @classmethod
    def execute(cls, mask) -> io.NodeOutput:
        image = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).movedim(1, -1).expand(-1, -1, -1, 3)
        return io.NodeOutput(ui=PreviewImage().save_images(image, "ComfyUI")["ui"])


MASK_NODES: list[type[_MaskNode]] = [
    LatentCompositeMasked, ImageCompositeMasked, MaskToImage, ImageToMask, ImageColorToMask, SolidMask, InvertMask,
    CropMask, MaskComposite, FeatherMask, GrowMask, ThresholdMask, MaskPreview,
]
NODE_CLASS_MAPPINGS = {node.define_schema().node_id: node for node in MASK_NODES}
