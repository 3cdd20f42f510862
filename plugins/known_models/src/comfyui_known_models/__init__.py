"""comfyui's known models: well-known model files offered in choice lists and downloaded on first use,
and Hugging Face repositories as model folders."""
from comfyui_known_models.catalogue import Catalogue, KnownModel, get_catalogue
from comfyui_known_models.errors import GatedModelError, ModelDownloadError, ModelIntegrityError, ModelUnavailableError
from comfyui_known_models.plugin import huggingface_repo

__all__ = [
    "Catalogue",
    "GatedModelError",
    "KnownModel",
    "ModelDownloadError",
    "ModelIntegrityError",
    "ModelUnavailableError",
    "get_catalogue",
    "huggingface_repo",
]
