"""The diffusion model as samplers see it: a UNet plus its noise schedule, latent format and conditioning inputs.

``apply_model(x, sigma, ...)`` returns the denoised latent; ``extra_conds`` turns a conditioning's
dict into the UNet's inputs (cross attention, SDXL's ADM vector, the inpainting concat).
"""
from __future__ import annotations

import enum
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

import torch

from comfyui_core_nodes import conds, latent_formats, model_management
from comfyui_core_nodes import model_sampling as sampling
from comfyui_core_nodes.ops import Operations, pick_operations
from comfyui_core_nodes.unet import Timestep, UNetConfig, UNetModel

logger = logging.getLogger(__name__)


class ModelType(enum.Enum):
    EPS = 1
    V_PREDICTION = 2
    V_PREDICTION_EDM = 3
    STABLE_CASCADE = 4
    EDM = 5
    FLOW = 6
    V_PREDICTION_CONTINUOUS = 7
    FLUX = 8
    IMG_TO_IMG = 9


_PREDICTIONS = {ModelType.EPS: sampling.EPS, ModelType.V_PREDICTION: sampling.V_PREDICTION,
                ModelType.IMG_TO_IMG: sampling.IMG_TO_IMG}


def model_sampling(model_config: Any, model_type: ModelType) -> sampling.ModelSamplingDiscrete:
    if model_type not in _PREDICTIONS:
        raise ValueError(f"{model_type.name} models are not supported by this plugin")
    return sampling.model_sampling(_PREDICTIONS[model_type], model_config)


@dataclass
class ModelConfig:
    """A model family's settings (ComfyUI's ``supported_models`` entry) with the UNet detected for a file."""
    family: str
    unet: UNetConfig
    latent_format: latent_formats.LatentFormat
    model_type: ModelType = ModelType.EPS
    model_class: str = "base"  # a MODEL_CLASSES key: how the ADM vector is built
    sampling_settings: dict[str, Any] = field(default_factory=dict)
    memory_usage_factor: float = 1.0
    supported_inference_dtypes: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32)
    manual_cast_dtype: Optional[torch.dtype] = None
    unet_dtype: Optional[torch.dtype] = None
    custom_operations: Optional[Operations] = None

    @property
    def unet_config(self) -> dict[str, Any]:
        """The UNet's settings as the dict vanilla nodes read (``unet_config["model_channels"]``...)."""
        config = asdict(self.unet)
        config["dtype"] = self.unet_dtype
        config["num_classes"] = "sequential" if self.unet.adm_in_channels is not None else None
        return config

    def inpaint_model(self) -> bool:
        return self.unet.in_channels > 4

    def set_inference_dtype(self, dtype: torch.dtype, manual_cast_dtype: Optional[torch.dtype]) -> None:
        self.unet_dtype = dtype
        self.manual_cast_dtype = manual_cast_dtype


def _convert_extra(value: Any, dtype: torch.dtype, device: torch.device) -> Any:
    if not hasattr(value, "dtype"):
        return value
    if value.dtype in (torch.int, torch.long):
        return model_management.cast_to_device(value, device, None)
    return model_management.cast_to_device(value, device, dtype)


# What an inpainting model sees where nothing is masked: the VAE latent of a grey (0.5) image.
BLANK_INPAINT_LATENT = (0.8223, -0.6876, 0.6364, 0.1380)


class BaseModel(torch.nn.Module):
    """SD1.x / SD2.x: the UNet conditioned on text embeddings (and a mask and image for inpainting)."""

    def __init__(self, model_config: ModelConfig, model_type: Optional[ModelType] = None, device: Any = None,
                 operations: Optional[Operations] = None):
        super().__init__()
        self.model_config = model_config
        self.latent_format = model_config.latent_format
        self.manual_cast_dtype = model_config.manual_cast_dtype
        self.model_type = model_type if model_type is not None else model_config.model_type
        self.device = device
        if operations is None:
            operations = model_config.custom_operations or pick_operations(model_config.unet_dtype,
                                                                           self.manual_cast_dtype)
        self.operations = operations
        self.diffusion_model = UNetModel(model_config.unet, dtype=model_config.unet_dtype, device=device,
                                         operations=operations).eval()
        self.model_sampling = model_sampling(model_config, self.model_type)
        self.adm_channels = model_config.unet.adm_in_channels or 0
        self.concat_keys: tuple[str, ...] = ()
        self.memory_usage_factor = model_config.memory_usage_factor
        self.training = False
        if model_config.inpaint_model():
            self.set_inpaint()

    def get_dtype(self) -> torch.dtype:
        return self.diffusion_model.dtype

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, c_concat: Optional[torch.Tensor] = None,
                    c_crossattn: Optional[torch.Tensor] = None, control: Optional[dict] = None,
                    transformer_options: Optional[dict] = None, **kwargs: Any) -> torch.Tensor:
        """The denoised latent for noisy ``x`` at sigma ``t`` (the UNet runs in the model's dtype)."""
        transformer_options = transformer_options if transformer_options is not None else {}
        sigma = t
        xc = self.model_sampling.calculate_input(sigma, x)
        if c_concat is not None:
            xc = torch.cat([xc, model_management.cast_to_device(c_concat, xc.device, xc.dtype)], dim=1)
        dtype = self.manual_cast_dtype if self.manual_cast_dtype is not None else self.get_dtype()
        xc = xc.to(dtype)
        device = xc.device
        timestep = self.model_sampling.timestep(t).float()
        context = c_crossattn
        if context is not None:
            context = model_management.cast_to_device(context, device, dtype)
        extra = {name: ([_convert_extra(item, dtype, device) for item in value] if isinstance(value, list)
                        else _convert_extra(value, dtype, device))
                 for name, value in kwargs.items()}
        output = self.diffusion_model(xc, timestep, context=context, control=control,
                                      transformer_options=transformer_options, **extra)
        return self.model_sampling.calculate_denoised(sigma, output.float(), x)

    def encode_adm(self, **kwargs: Any) -> Optional[torch.Tensor]:
        return None

    def set_inpaint(self) -> None:
        self.concat_keys = ("mask", "masked_image")

    def blank_inpaint_image_like(self, latent_image: torch.Tensor) -> torch.Tensor:
        blank = torch.ones_like(latent_image)
        for channel, value in enumerate(BLANK_INPAINT_LATENT):
            blank[:, channel] *= value
        return blank

    def concat_cond(self, **kwargs: Any) -> Optional[torch.Tensor]:
        """Inpainting models' extra input channels: the mask and the masked image's latent."""
        if not self.concat_keys:
            return None
        from comfyui_core_nodes.utils import common_upscale, resize_to_batch_size

        noise: torch.Tensor = kwargs["noise"]
        device = kwargs["device"]
        denoise_mask = kwargs.get("concat_mask", kwargs.get("denoise_mask"))
        concat_latent = kwargs.get("concat_latent_image")
        if concat_latent is None:
            concat_latent = kwargs.get("latent_image")
        else:
            concat_latent = self.process_latent_in(concat_latent)
        if concat_latent is None:
            concat_latent = self.blank_inpaint_image_like(noise)
        if concat_latent.shape[1:] != noise.shape[1:]:
            concat_latent = common_upscale(concat_latent, noise.shape[-1], noise.shape[-2], "bilinear", "center")
        concat_latent = resize_to_batch_size(concat_latent, noise.shape[0])
        if denoise_mask is not None:
            if denoise_mask.ndim == noise.ndim:
                denoise_mask = denoise_mask[:, :1]
            denoise_mask = denoise_mask.reshape((-1, 1) + tuple(denoise_mask.shape[-2:]))
            if denoise_mask.shape[-2:] != noise.shape[-2:]:
                denoise_mask = common_upscale(denoise_mask, noise.shape[-1], noise.shape[-2], "bilinear", "center")
            denoise_mask = resize_to_batch_size(denoise_mask.round(), noise.shape[0])
        parts = []
        for key in self.concat_keys:
            if key == "mask":
                parts.append(denoise_mask.to(device) if denoise_mask is not None else torch.ones_like(noise)[:, :1])
            elif key == "masked_image":
                parts.append(concat_latent.to(device) if denoise_mask is not None
                             else self.blank_inpaint_image_like(noise))
        return torch.cat(parts, dim=1)

    def extra_conds(self, **kwargs: Any) -> dict[str, conds.CONDRegular]:
        """The UNet inputs for one conditioning (its dict, plus ``noise``, ``device``, ``latent_image``...)."""
        out: dict[str, conds.CONDRegular] = {}
        concat = self.concat_cond(**kwargs)
        if concat is not None:
            out["c_concat"] = conds.CONDNoiseShape(concat)
        adm = self.encode_adm(**kwargs)
        if adm is not None:
            out["y"] = conds.CONDRegular(adm)
        cross_attn = kwargs.get("cross_attn")
        if cross_attn is not None:
            out["c_crossattn"] = conds.CONDCrossAttn(cross_attn)
        cross_attn_controlnet = kwargs.get("cross_attn_controlnet")
        if cross_attn_controlnet is not None:
            out["crossattn_controlnet"] = conds.CONDCrossAttn(cross_attn_controlnet)
        noise_concat = kwargs.get("noise_concat")
        if noise_concat is not None:
            out["c_concat"] = conds.CONDNoiseShape(noise_concat)
        return out

    def extra_conds_shapes(self, **kwargs: Any) -> dict[str, Any]:
        return {}

    def process_latent_in(self, latent: torch.Tensor) -> torch.Tensor:
        return self.latent_format.process_in(latent)

    def process_latent_out(self, latent: torch.Tensor) -> torch.Tensor:
        return self.latent_format.process_out(latent)

    def scale_latent_inpaint(self, sigma: torch.Tensor, noise: torch.Tensor, latent_image: torch.Tensor,
                             **kwargs: Any) -> torch.Tensor:
        return self.model_sampling.noise_scaling(sigma.reshape([sigma.shape[0]] + [1] * (noise.ndim - 1)), noise,
                                                 latent_image)

    def memory_required(self, input_shape: Sequence[int], cond_shapes: Optional[dict] = None) -> float:
        """Bytes a model call on a batch of ``input_shape`` needs beyond the weights (ComfyUI's estimate)."""
        area = input_shape[0] * math.prod(input_shape[2:])
        if model_management.pytorch_attention_flash_attention():
            dtype = self.manual_cast_dtype if self.manual_cast_dtype is not None else self.get_dtype()
            return area * model_management.dtype_size(dtype) * 0.01 * self.memory_usage_factor * (1024 * 1024)
        return area * 0.15 * self.memory_usage_factor * (1024 * 1024)

    def state_dict_for_saving(self, clip_state_dict: Optional[dict] = None, vae_state_dict: Optional[dict] = None,
                              clip_vision_state_dict: Optional[dict] = None) -> dict[str, torch.Tensor]:
        """The single-file checkpoint layout: ``model.diffusion_model.`` plus the given parts (already prefixed
        for the text encoders, unprefixed for the VAE)."""
        out = {f"model.diffusion_model.{key}": value for key, value in self.diffusion_model.state_dict().items()}
        if self.model_type == ModelType.V_PREDICTION:
            out["v_pred"] = torch.tensor([])
        if vae_state_dict is not None:
            out.update({f"first_stage_model.{key}": value for key, value in vae_state_dict.items()})
        if clip_state_dict is not None:
            out.update(clip_state_dict)
        return out


class NoiseAugmentor(torch.nn.Module):
    """Noises CLIP image embeddings to a chosen level and embeds the level (unCLIP, SDXL revision).

    The schedule is the squared-cosine DDPM one over 1000 levels. Embeddings are normalised with
    zero mean and unit deviation (ComfyUI's statistics; the released checkpoints carry none), which
    also turns a single embedding into a batch of one.
    """
    max_noise_level = 1000

    def __init__(self, timestep_dim: int):
        super().__init__()
        alphas_cumprod = torch.cumprod(1.0 - sampling.make_beta_schedule("squaredcos_cap_v2", 1000), dim=0)
        self.register_buffer("sqrt_alphas_cumprod", alphas_cumprod.sqrt().float(), persistent=False)
        self.register_buffer("sqrt_one_minus_alphas_cumprod", (1.0 - alphas_cumprod).sqrt().float(),
                             persistent=False)
        self.register_buffer("data_mean", torch.zeros(1, timestep_dim), persistent=False)
        self.register_buffer("data_std", torch.ones(1, timestep_dim), persistent=False)
        self.time_embed = Timestep(timestep_dim)

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor, seed: Optional[int] = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = self.data_mean.to(x.device), self.data_std.to(x.device)
        x = (x - mean) * 1. / std
        if seed is None:
            noise = torch.randn_like(x)
        else:
            # Seeding the global generator (not a private one) is what ComfyUI does; samplers that draw
            # from the global generator afterwards see the same state as there.
            noise = torch.randn(x.size(), dtype=x.dtype, layout=x.layout, generator=torch.manual_seed(seed)).to(x.device)
        shape = (noise_level.shape[0],) + (1,) * (x.ndim - 1)
        noised = (self.sqrt_alphas_cumprod.to(x.device).gather(-1, noise_level).reshape(shape) * x
                  + self.sqrt_one_minus_alphas_cumprod.to(x.device).gather(-1, noise_level).reshape(shape) * noise)
        return noised * std + mean, self.time_embed(noise_level)


def unclip_adm(unclip_conditioning: list[dict], device: Any, noise_augmentor: NoiseAugmentor,
               noise_augment_merge: float = 0.0, seed: Optional[int] = None) -> torch.Tensor:
    """The ADM vector from unCLIPConditioning entries: each image embedding noised, level-embedded, weighted."""
    def level(amount: float) -> torch.Tensor:
        return torch.tensor([round((noise_augmentor.max_noise_level - 1) * amount)], device=device)

    parts = []
    for entry in unclip_conditioning:
        for embedding in entry["clip_vision_output"].image_embeds:
            noised, level_embedding = noise_augmentor(embedding.to(device), noise_level=level(entry["noise_augmentation"]),
                                                      seed=seed)
            parts.append(torch.cat((noised, level_embedding), 1) * entry["strength"])
    if len(parts) == 1:
        return parts[0]
    # Several images: their sum, noised again at the merge level.
    summed = torch.stack(parts).sum(0)
    noised, level_embedding = noise_augmentor(summed[:, :noise_augmentor.time_embed.dim],
                                              noise_level=level(noise_augment_merge))
    return torch.cat((noised, level_embedding), 1)


class SD21UNCLIP(BaseModel):
    """SD 2.1 unCLIP: the ADM vector is a noised CLIP image embedding (zeros without one)."""

    def __init__(self, model_config: ModelConfig, model_type: Optional[ModelType] = None, device: Any = None,
                 operations: Optional[Operations] = None):
        super().__init__(model_config, model_type, device, operations)
        self.noise_augmentor = NoiseAugmentor(self.adm_channels // 2)

    def encode_adm(self, **kwargs: Any) -> torch.Tensor:
        unclip_conditioning = kwargs.get("unclip_conditioning")
        if unclip_conditioning is None:
            return torch.zeros((1, self.adm_channels), device=kwargs["device"])
        return unclip_adm(unclip_conditioning, kwargs["device"], self.noise_augmentor,
                          kwargs.get("unclip_noise_augment_merge", 0.05), kwargs.get("seed", 0) - 10)


class _SizeConditioned(BaseModel):
    """SDXL's ADM vector: the pooled bigG embedding followed by numbers embedded like timesteps."""
    embedder = Timestep(256)
    size_values = 6

    def __init__(self, model_config: ModelConfig, model_type: Optional[ModelType] = None, device: Any = None,
                 operations: Optional[Operations] = None):
        super().__init__(model_config, model_type, device, operations)
        # Revision (unCLIPConditioning on SDXL) puts a noised image embedding where the pooled text goes.
        self.noise_augmentor = NoiseAugmentor(self.pooled_width)

    @property
    def pooled_width(self) -> int:
        return self.adm_channels - self.size_values * 256

    def _size_embeddings(self, values: Sequence[float], batch: int) -> torch.Tensor:
        embedded = torch.cat([self.embedder(torch.Tensor([value])) for value in values])
        return torch.flatten(embedded).unsqueeze(dim=0).repeat(batch, 1)

    def _pooled(self, kwargs: dict) -> torch.Tensor:
        if "unclip_conditioning" in kwargs:
            return unclip_adm(kwargs["unclip_conditioning"], kwargs["device"], self.noise_augmentor,
                              seed=kwargs.get("seed", 0) - 10)[:, :self.pooled_width]
        pooled = kwargs.get("pooled_output")
        if pooled is None:
            raise ValueError("SDXL conditioning needs a pooled_output (encode the prompt with an SDXL CLIP)")
        return pooled


class SDXL(_SizeConditioned):
    """SDXL base: size, crop and target size."""

    def encode_adm(self, **kwargs: Any) -> torch.Tensor:
        pooled = self._pooled(kwargs)
        width, height = kwargs.get("width", 768), kwargs.get("height", 768)
        values = (height, width, kwargs.get("crop_h", 0), kwargs.get("crop_w", 0),
                  kwargs.get("target_height", height), kwargs.get("target_width", width))
        flat = self._size_embeddings(values, pooled.shape[0])
        return torch.cat((pooled.to(flat.device), flat), dim=1)


class SDXLRefiner(_SizeConditioned):
    """SDXL refiner: size, crop and an aesthetic score (2.5 for negatives, 6 otherwise, by default)."""
    size_values = 5

    def encode_adm(self, **kwargs: Any) -> torch.Tensor:
        pooled = self._pooled(kwargs)
        default_score = 2.5 if kwargs.get("prompt_type", "") == "negative" else 6
        values = (kwargs.get("height", 768), kwargs.get("width", 768), kwargs.get("crop_h", 0),
                  kwargs.get("crop_w", 0), kwargs.get("aesthetic_score", default_score))
        flat = self._size_embeddings(values, pooled.shape[0])
        return torch.cat((pooled.to(flat.device), flat), dim=1)


MODEL_CLASSES: dict[str, type[BaseModel]] = {"base": BaseModel, "sdxl": SDXL, "sdxl_refiner": SDXLRefiner,
                                             "sd2_unclip": SD21UNCLIP}


def create_model(model_config: ModelConfig, device: Any = None) -> BaseModel:
    """The model object for a config, its UNet on ``device`` (``"meta"`` to fill in from a file)."""
    return MODEL_CLASSES[model_config.model_class](model_config, device=device)


__all__ = ["BLANK_INPAINT_LATENT", "BaseModel", "MODEL_CLASSES", "ModelConfig", "ModelType", "NoiseAugmentor",
           "SD21UNCLIP", "SDXL", "SDXLRefiner", "create_model", "model_sampling", "unclip_adm"]
