"""What schema nodes show in the frontend: ``io.NodeOutput(ui=ui.PreviewText("..."))``."""
from __future__ import annotations

from comfy_api.latest.io import FolderType, _UIOutput


class SavedResult(dict):
    """One file a node wrote, as the frontend's ``/view`` route addresses it."""

    def __init__(self, filename: str, subfolder: str, type: FolderType):
        super().__init__(filename=filename, subfolder=subfolder, type=FolderType(type).value)

    @property
    def filename(self) -> str:
        return self["filename"]

    @property
    def subfolder(self) -> str:
        return self["subfolder"]

    @property
    def type(self) -> FolderType:
        return FolderType(self["type"])


class SavedImages(_UIOutput):
    """Images already saved to disk, shown in the node."""

    def __init__(self, results: list[SavedResult], is_animated: bool = False):
        self.results = results
        self.is_animated = is_animated

    def as_dict(self) -> dict:
        data: dict = {"images": self.results}
        if self.is_animated:
            data["animated"] = (True,)
        return data


class SavedAudios(_UIOutput):
    """Audio files already saved to disk, shown in the node."""

    def __init__(self, results: list[SavedResult]):
        self.results = results

    def as_dict(self) -> dict:
        return {"audio": self.results}


class PreviewText(_UIOutput):
    """Text shown in the node."""

    def __init__(self, value: str, **kwargs: object):
        self.value = value

    def as_dict(self) -> dict:
        return {"text": (self.value,)}


__all__ = ["SavedResult", "SavedImages", "SavedAudios", "PreviewText"]
