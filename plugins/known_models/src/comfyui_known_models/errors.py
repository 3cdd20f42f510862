"""What goes wrong fetching a known model, each with a message that says what to do about it."""
from __future__ import annotations


class ModelDownloadError(Exception):
    """A known model could not be fetched; ``url`` is where it comes from."""

    def __init__(self, message: str, *, filename: str, url: str):
        super().__init__(message)
        self.filename = filename
        self.url = url


class GatedModelError(ModelDownloadError):
    """The hub refused access (401/403): the model is gated or private, or no token was given."""


class ModelUnavailableError(ModelDownloadError):
    """The hub could not be reached, or it does not have the file."""


class ModelIntegrityError(ModelDownloadError):
    """The downloaded bytes do not match the checksum the hub reports; nothing was kept."""
