"""Loader nodes: checkpoints, diffusion models, VAEs, LoRAs and ControlNets from the model folders."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    import torch

FLOAT_STRENGTH = {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}
UNET_WEIGHT_DTYPES = ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]


def _filenames(folder: str) -> list[str]:
    from comfy import paths

    return paths.get_filename_list(folder)


def _full_path(folder: str, name: str) -> str:
    from comfy import paths

    return paths.get_full_path_or_raise(folder, name)


def _embedding_folders() -> list[str]:
    from comfy import paths

    return paths.get_folder_paths("embeddings")


def _weight_dtype_options(weight_dtype: str) -> dict[str, Any]:
    """UNETLoader's weight_dtype choice as loader options (fp8 storage, computing in the usual dtype)."""
    import torch

    dtypes = {"fp8_e4m3fn": getattr(torch, "float8_e4m3fn", None), "fp8_e4m3fn_fast": getattr(torch, "float8_e4m3fn", None),
              "fp8_e5m2": getattr(torch, "float8_e5m2", None)}
    dtype = dtypes.get(weight_dtype)
    return {"dtype": dtype} if dtype is not None else {}


class CheckpointLoaderSimple:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"ckpt_name": (_filenames("checkpoints"),
                                           {"tooltip": "The name of the checkpoint (model) to load."})}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    OUTPUT_TOOLTIPS = ("The model used for denoising latents.", "The CLIP model used for encoding text prompts.",
                       "The VAE model used for encoding and decoding images to and from latent space.")
    FUNCTION = "load_checkpoint"
    CATEGORY = "loaders"
    DESCRIPTION = "Loads a diffusion model checkpoint, diffusion models are used to denoise latents."

    def load_checkpoint(self, ckpt_name: str) -> tuple[Any, Any, Any]:
        from comfyui_core_nodes import sd

        model, clip, vae, _ = sd.load_checkpoint_guess_config(_full_path("checkpoints", ckpt_name),
                                                              embedding_directory=_embedding_folders())
        return model, clip, vae


class unCLIPCheckpointLoader:
    """An SD 2.1 unCLIP checkpoint, with the CLIP vision tower it carries."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"ckpt_name": (_filenames("checkpoints"),)}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE", "CLIP_VISION")
    FUNCTION = "load_checkpoint"
    CATEGORY = "loaders"

    def load_checkpoint(self, ckpt_name: str) -> tuple[Any, Any, Any, Any]:
        from comfyui_core_nodes import sd

        model, clip, vae, clip_vision = sd.load_checkpoint_guess_config(
            _full_path("checkpoints", ckpt_name), output_clipvision=True, embedding_directory=_embedding_folders())
        if clip_vision is None:
            raise ValueError(f"{ckpt_name} is a {model.model.model_config.family} checkpoint without a CLIP vision "
                             f"model; unCLIPCheckpointLoader needs an unCLIP checkpoint")
        return model, clip, vae, clip_vision


class CheckpointLoader:
    """The old loader with a model config file; the architecture is detected from the weights instead."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"config_name": (_filenames("configs"),), "ckpt_name": (_filenames("checkpoints"),)}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load_checkpoint"
    CATEGORY = "advanced/loaders"
    DEPRECATED = True

    def load_checkpoint(self, config_name: str, ckpt_name: str) -> tuple[Any, Any, Any]:
        return CheckpointLoaderSimple().load_checkpoint(ckpt_name)


class UNETLoader:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"unet_name": (_filenames("diffusion_models"),),
                             "weight_dtype": (UNET_WEIGHT_DTYPES,)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load_unet"
    CATEGORY = "advanced/loaders"

    def load_unet(self, unet_name: str, weight_dtype: str = "default") -> tuple[Any]:
        from comfyui_core_nodes import sd

        return (sd.load_diffusion_model(_full_path("diffusion_models", unet_name),
                                        model_options=_weight_dtype_options(weight_dtype)),)


class VAELoader:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"vae_name": (_filenames("vae"),)}}

    RETURN_TYPES = ("VAE",)
    FUNCTION = "load_vae"
    CATEGORY = "loaders"

    def load_vae(self, vae_name: str) -> tuple[Any]:
        from comfyui_core_nodes import sd

        return (sd.load_vae(_full_path("vae", vae_name)),)


class LoraLoader:
    def __init__(self) -> None:
        # The last LoRA file read, reused while the node's inputs only change strengths.
        self.loaded_lora: Optional[tuple[str, dict[str, torch.Tensor]]] = None

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "model": ("MODEL", {"tooltip": "The diffusion model the LoRA will be applied to."}),
            "clip": ("CLIP", {"tooltip": "The CLIP model the LoRA will be applied to."}),
            "lora_name": (_filenames("loras"), {"tooltip": "The name of the LoRA."}),
            "strength_model": ("FLOAT", {**FLOAT_STRENGTH, "tooltip": "How strongly to modify the diffusion model. "
                                                                     "This value can be negative."}),
            "strength_clip": ("FLOAT", {**FLOAT_STRENGTH, "tooltip": "How strongly to modify the CLIP model. "
                                                                    "This value can be negative."})}}

    RETURN_TYPES = ("MODEL", "CLIP")
    # LoraLoaderModelOnly inherits both tooltips and the description, as in ComfyUI.
    OUTPUT_TOOLTIPS = ("The modified diffusion model.", "The modified CLIP model.")
    FUNCTION = "load_lora"
    CATEGORY = "loaders"
    DESCRIPTION = ("LoRAs are used to modify diffusion and CLIP models, altering the way in which latents are "
                   "denoised such as applying styles. Multiple LoRA nodes can be linked together.")

    def _read(self, lora_name: str) -> dict[str, torch.Tensor]:
        from comfyui_core_nodes.loading import load_torch_file

        path = _full_path("loras", lora_name)
        if self.loaded_lora is None or self.loaded_lora[0] != path:
            self.loaded_lora = (path, load_torch_file(path))
        return self.loaded_lora[1]

    def load_lora(self, model: Any, clip: Any, lora_name: str, strength_model: float,
                  strength_clip: float) -> tuple[Any, Any]:
        if strength_model == 0 and strength_clip == 0:
            return model, clip
        from comfyui_core_nodes.lora import load_lora_for_models

        return load_lora_for_models(model, clip, self._read(lora_name), strength_model, strength_clip,
                                    lora_name=lora_name)


class LoraLoaderModelOnly(LoraLoader):
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"model": ("MODEL",), "lora_name": (_filenames("loras"),),
                             "strength_model": ("FLOAT", dict(FLOAT_STRENGTH))}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load_lora_model_only"

    def load_lora_model_only(self, model: Any, lora_name: str, strength_model: float) -> tuple[Any]:
        return (self.load_lora(model, None, lora_name, strength_model, 0)[0],)


class ControlNetLoader:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"control_net_name": (_filenames("controlnet"),)}}

    RETURN_TYPES = ("CONTROL_NET",)
    FUNCTION = "load_controlnet"
    CATEGORY = "loaders"

    def load_controlnet(self, control_net_name: str) -> tuple[Any]:
        from comfyui_core_nodes import controlnet

        return (controlnet.load_controlnet(_full_path("controlnet", control_net_name)),)


class DiffControlNetLoader:
    """A ControlNet stored as a difference to the model it was trained from."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"model": ("MODEL",), "control_net_name": (_filenames("controlnet"),)}}

    RETURN_TYPES = ("CONTROL_NET",)
    FUNCTION = "load_controlnet"
    CATEGORY = "loaders"

    def load_controlnet(self, model: Any, control_net_name: str) -> tuple[Any]:
        from comfyui_core_nodes import controlnet

        return (controlnet.load_controlnet(_full_path("controlnet", control_net_name), model),)


NODE_CLASS_MAPPINGS = {
    "CheckpointLoaderSimple": CheckpointLoaderSimple,
    "CheckpointLoader": CheckpointLoader,
    "unCLIPCheckpointLoader": unCLIPCheckpointLoader,
    "UNETLoader": UNETLoader,
    "VAELoader": VAELoader,
    "LoraLoader": LoraLoader,
    "LoraLoaderModelOnly": LoraLoaderModelOnly,
    "ControlNetLoader": ControlNetLoader,
    "DiffControlNetLoader": DiffControlNetLoader,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "CheckpointLoaderSimple": "Load Checkpoint",
    "CheckpointLoader": "Load Checkpoint With Config (DEPRECATED)",
    "UNETLoader": "Load Diffusion Model",
    "VAELoader": "Load VAE",
    "LoraLoader": "Load LoRA",
    "ControlNetLoader": "Load ControlNet Model",
    "DiffControlNetLoader": "Load ControlNet Model (diff)",
}
