"""Progress reporting from inside a node, delivered as ComfyUI's ``progress`` events."""
from __future__ import annotations

import io
from typing import Any, Optional

from comfy.execution_context import ExecutionContext, current_execution


class ProgressBar:
    """A node's progress; ``preview`` images ride along as ``preview_image`` events.

    The execution it reports to is captured when the bar is made, so updates from a worker thread
    the node started still reach the right client.
    """

    def __init__(self, total: int, node_id: Optional[str] = None):
        self.total = total
        self.current = 0
        self._context: Optional[ExecutionContext] = current_execution()
        self._node_id = node_id if node_id is not None else (self._context.node_id if self._context else None)

    def update_absolute(self, value: int, total: Optional[int] = None, preview: Any = None) -> None:
        if total is not None:
            self.total = total
        self.current = min(value, self.total) if self.total else value
        context = self._context
        if context is None:
            return
        context.emit("progress", {"value": self.current, "max": self.total, "prompt_id": context.prompt_id,
                                  "node": self._node_id})
        if preview is not None:
            # A (format, image, max_size) tuple as ComfyUI's latent previewers make; the server encodes it.
            context.emit("preview_image", {"prompt_id": context.prompt_id, "node": self._node_id,
                                           "display_node": context.display_node_id, "image": preview})

    def update(self, value: int) -> None:
        self.update_absolute(self.current + value)


def encode_preview_image(preview: Any) -> tuple[str, bytes]:
    """A ``preview_image`` event's ``(format, PIL image, max_size)`` as ``("PNG" or "JPEG", encoded bytes)``:
    shrunk to ``max_size`` and encoded once, wherever the event is sent on (websocket, message broker)."""
    from PIL import Image, ImageOps

    image_format, image, max_size = preview
    image_format = "PNG" if str(image_format).upper() == "PNG" else "JPEG"
    if max_size is not None and max(image.size) > max_size:
        image = ImageOps.contain(image, (max_size, max_size), Image.Resampling.BILINEAR)
    if image_format == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, quality=95, compress_level=1)
    return image_format, buffer.getvalue()

