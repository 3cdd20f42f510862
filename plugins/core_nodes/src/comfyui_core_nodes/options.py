"""The core nodes plugin's command-line options: devices, memory, precision, attention, loading, previews.

Names and meanings follow ComfyUI's, so launch scripts and config files carry over unchanged.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Optional

if TYPE_CHECKING:
    import configargparse

PREVIEW_METHODS = ("none", "auto", "latent2rgb", "taesd")

# (flag, help) for each mutually exclusive precision group.
_FLOAT_FLAGS = (
    ("--force-fp32", "Compute everything in fp32."),
    ("--force-fp16", "Compute in fp16 wherever the device allows."),
    ("--force-bf16", "Compute in bf16 wherever the device allows."),
)
_UNET_FLAGS = (
    ("--fp32-unet", "Run the diffusion model in fp32."),
    ("--fp64-unet", "Run the diffusion model in fp64."),
    ("--bf16-unet", "Run the diffusion model in bf16."),
    ("--fp16-unet", "Run the diffusion model in fp16."),
    ("--fp8_e4m3fn-unet", "Store the diffusion model's weights in fp8_e4m3fn."),
    ("--fp8_e5m2-unet", "Store the diffusion model's weights in fp8_e5m2."),
)
_VAE_FLAGS = (
    ("--fp16-vae", "Run the VAE in fp16 (may give black images)."),
    ("--fp32-vae", "Run the VAE in fp32."),
    ("--bf16-vae", "Run the VAE in bf16."),
)
_TEXT_ENCODER_FLAGS = (
    ("--fp8_e4m3fn-text-enc", "Store text encoder weights in fp8 (e4m3fn)."),
    ("--fp8_e5m2-text-enc", "Store text encoder weights in fp8 (e5m2)."),
    ("--fp16-text-enc", "Store text encoder weights in fp16."),
    ("--fp32-text-enc", "Store text encoder weights in fp32."),
    ("--bf16-text-enc", "Store text encoder weights in bf16."),
)
_VRAM_FLAGS = (
    ("--gpu-only", "Store and run everything, text encoders included, on the GPU."),
    ("--highvram", "Keep models in GPU memory after use instead of moving them back to the CPU."),
    ("--normalvram", "Use normal VRAM management even where low-VRAM mode would be chosen."),
    ("--lowvram", "Stream parts of a model that does not fit to the GPU while it runs."),
    ("--novram", "Keep every weight in CPU memory and stream all of them (when --lowvram is not enough)."),
    ("--cpu", "Use the CPU for everything (slow)."),
)
_ATTENTION_FLAGS = (
    ("--use-split-cross-attention", "Use the split (sliced) cross attention."),
    ("--use-quad-cross-attention", "Use the sub-quadratic cross attention."),
    ("--use-pytorch-cross-attention", "Use PyTorch's scaled_dot_product_attention (the default on CUDA and XPU; the CPU and MPS default to sub-quadratic attention)."),
    ("--use-sage-attention", "Use SageAttention (needs the sageattention package)."),
    ("--use-flash-attention", "Use FlashAttention (needs the flash-attn package)."),
)
_UPCAST_FLAGS = (
    ("--force-upcast-attention", "Always compute attention scores in fp32."),
    ("--dont-upcast-attention", "Never upcast attention to fp32, even where a model asks for it."),
)


def _exclusive(parser: Any, flags: tuple[tuple[str, str], ...]) -> None:
    group = parser.add_mutually_exclusive_group()
    for flag, text in flags:
        group.add_argument(flag, action="store_true", help=text)


def add_options(parser: "configargparse.ArgParser") -> None:
    devices = parser.add_argument_group("devices")
    devices.add_argument("--cuda-device", type=int, default=None, metavar="DEVICE_ID",
                         help="Use only this CUDA device; the others become invisible to this process.")
    devices.add_argument("--default-device", type=int, default=None, metavar="DEFAULT_DEVICE_ID",
                         help="Compute on this device by default; the others stay visible.")
    _exclusive(devices, _VRAM_FLAGS)
    devices.add_argument("--reserve-vram", type=float, default=None, metavar="GB",
                         help="Leave this many GB of VRAM to other software.")
    devices.add_argument("--disable-smart-memory", action="store_true",
                         help="Move models back to CPU memory after each use instead of keeping what fits in VRAM.")

    precision = parser.add_argument_group("precision")
    _exclusive(precision, _FLOAT_FLAGS)
    _exclusive(precision, _UNET_FLAGS)
    _exclusive(precision, _VAE_FLAGS)
    precision.add_argument("--cpu-vae", action="store_true", help="Run the VAE on the CPU.")
    _exclusive(precision, _TEXT_ENCODER_FLAGS)

    attention = parser.add_argument_group("attention")
    _exclusive(attention, _ATTENTION_FLAGS)
    _exclusive(attention, _UPCAST_FLAGS)

    loading = parser.add_argument_group("model loading")
    loading.add_argument("--disable-mmap", action="store_true",
                         help="Read .safetensors files into memory instead of memory-mapping them.")

    previews = parser.add_argument_group("previews")
    previews.add_argument("--preview-method", choices=PREVIEW_METHODS, default="auto",
                          help="How sampler nodes preview latents: none, auto (TAESD when its weights are in "
                               "models/vae_approx, else latent2rgb), latent2rgb or taesd.")
    previews.add_argument("--preview-size", type=int, default=512,
                          help="Largest side of a preview image in pixels.")


# Every option above with its default, for configurations that were parsed without this plugin.
DEFAULTS: dict[str, Any] = {
    "cuda_device": None, "default_device": None, "reserve_vram": None, "disable_smart_memory": False,
    "cpu_vae": False, "disable_mmap": False, "preview_method": "auto", "preview_size": 512,
    **{flag.lstrip("-").replace("-", "_"): False
       for flags in (_FLOAT_FLAGS, _UNET_FLAGS, _VAE_FLAGS, _TEXT_ENCODER_FLAGS, _VRAM_FLAGS, _ATTENTION_FLAGS,
                     _UPCAST_FLAGS)
       for flag, _ in flags},
}

# The configuration of the most recently started kernel (an embedded client's may differ from the
# process's); without one, comfy.cli_args.args.
_started: Optional[Mapping[str, Any]] = None


def set_started_configuration(configuration: Optional[Mapping[str, Any]]) -> None:
    global _started
    _started = configuration


def option(name: str) -> Any:
    """This plugin's option ``name`` (argparse dest) from the running configuration."""
    configuration = _started
    if configuration is None:
        from comfy.cli_args import args
        configuration = args
    if name in configuration:
        return configuration[name]
    return DEFAULTS[name]


__all__ = ["DEFAULTS", "PREVIEW_METHODS", "add_options", "option", "set_started_configuration"]
