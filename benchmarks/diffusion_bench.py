"""Prints sampling figures: seconds per step and peak memory of a tiny SD1 checkpoint on the CPU (a txt2img
workflow through the embedded client), and on CUDA the iterations per second of full-size SD1.5 (512x512)
and SDXL (1024x1024) UNets with random weights, built in memory without downloads.

Run from a checkout with the core nodes and samplers plugins installed:
    python benchmarks/diffusion_bench.py [--steps 20] [--full-steps 20] [--full-size-device cpu]
"""
from __future__ import annotations

import argparse
import asyncio
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# The tests' builders of tiny checkpoints in the released single-file layout.
sys.path.insert(0, str(ROOT / "tests" / "diffusion"))


def peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2 ** 20


def current_rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2 ** 20


# --- the tiny checkpoint through the embedded client -------------------------------------------

def txt2img(steps: int, size: int, seed: int) -> dict:
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd1.safetensors"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat, (detailed:1.2)",
                                                           "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "lowres", "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "sample": {"class_type": "KSampler", "inputs": {
            "model": ["ckpt", 0], "seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
            "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "bench"}},
    }


async def tiny_cpu(steps: int, size: int, repeats: int) -> None:
    import fixtures

    with tempfile.TemporaryDirectory() as base:
        fixtures.write_checkpoint(Path(base) / "models" / "checkpoints" / "tiny_sd1.safetensors", family="sd1")
        rss_before = current_rss_mib()
        try:
            async with fixtures.core_comfy(Path(base), cpu=True) as client:
                await client.queue_prompt(txt2img(2, size, seed=0))  # loads the models, warms the kernels
                # The difference between a long and a short run is the sampling steps alone: loading, text
                # encoding and decoding cost the same in both.
                short, long = [], []
                for repeat in range(repeats):
                    for count, timings in ((1, short), (steps + 1, long)):
                        started = time.perf_counter()
                        await client.queue_prompt(txt2img(count, size, seed=repeat + 1))
                        timings.append(time.perf_counter() - started)
        finally:
            fixtures.stop_kernel()
    per_step = (min(long) - min(short)) / steps
    print(f"Tiny SD1 checkpoint on the CPU, txt2img {size}x{size} (latent {size // 8}x{size // 8}), euler, "
          f"cfg 7 (two UNet passes per step), {torch.get_num_threads()} threads:")
    print(f"  {per_step * 1000:.1f} ms per sampling step ({1 / per_step:.1f} it/s); whole prompt with "
          f"{steps + 1} steps {min(long):.2f} s, with 1 step {min(short):.2f} s")
    print(f"  process memory: {rss_before:.0f} MiB before loading, peak RSS {peak_rss_mib():.0f} MiB")


# --- full-size UNets with random weights --------------------------------------------------------

def full_size_configs() -> dict:
    from comfyui_core_nodes.unet import UNetConfig

    return {
        # The UNetConfig defaults are SD1.5's.
        "SD1.5": (UNetConfig(), 512, 768, None),
        "SDXL": (UNetConfig(model_channels=320, channel_mult=[1, 2, 4], num_res_blocks=[2, 2, 2],
                            transformer_depth=[0, 0, 2, 2, 10, 10],
                            transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], transformer_depth_middle=10,
                            context_dim=2048, use_linear_in_transformer=True, adm_in_channels=2816, num_heads=-1,
                            num_head_channels=64), 1024, 2048, 1280),
    }


def random_unet_state_dict(config, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights of the UNet's shapes, scaled by fan-in so activations stay finite in half precision."""
    from comfyui_core_nodes.unet import UNetModel

    with torch.device("meta"):
        unet = UNetModel(config)
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for key, meta in unet.state_dict().items():
        shape = tuple(meta.shape)
        values = torch.randn(shape, generator=generator)
        if len(shape) > 1:
            values /= math.sqrt(math.prod(shape[1:]))
        elif key.endswith(".weight") and "norm" in key:
            values = 1.0 + 0.1 * values
        else:
            values *= 0.05
        state_dict["model.diffusion_model." + key] = values.to(dtype)
    return state_dict


def full_size(name: str, steps: int, device_name: str, size: int | None) -> None:
    from comfyui_core_nodes import model_management, sd
    from comfyui_samplers.noise import prepare_noise
    from comfyui_samplers.sample import sample

    config, default_size, context_dim, pooled = full_size_configs()[name]
    size = size or default_size
    on_cuda = device_name == "cuda"
    dtype = torch.float16 if on_cuda else torch.float32
    started = time.perf_counter()
    model = sd.load_diffusion_model_state_dict(random_unet_state_dict(config, dtype), name=name)
    built = time.perf_counter() - started
    generator = torch.Generator().manual_seed(1)
    extra = {} if pooled is None else {"pooled_output": torch.randn((1, pooled), generator=generator),
                                       "width": size, "height": size}
    positive = [[torch.randn((1, 77, context_dim), generator=generator), dict(extra)]]
    negative = [[torch.randn((1, 77, context_dim), generator=generator), dict(extra)]]
    latent = torch.zeros((1, 4, size // 8, size // 8))
    stamps: list[float] = []

    def on_step(step: int, x0: torch.Tensor, x: torch.Tensor, total: int) -> None:
        if on_cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    sample(model, prepare_noise(latent, 0), steps + 1, 7.0, "euler", "normal", positive, negative, latent,
           callback=on_step, disable_pbar=True, seed=0)
    # Step 0 includes loading the weights to the device and kernel selection; time the steps after it.
    per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    print(f"{name} UNet ({sum(t.numel() for t in model.model.diffusion_model.state_dict().values()) / 1e9:.2f}B "
          f"parameters, {str(dtype).removeprefix('torch.')}, random weights built in {built:.0f} s) on "
          f"{model_management.get_torch_device_name(model_management.get_torch_device())}, "
          f"{size}x{size}, euler, cfg 7 (batch of 2 per step):")
    memory = (f"peak {torch.cuda.max_memory_allocated() / 2 ** 30:.2f} GiB allocated on the GPU" if on_cuda
              else f"peak RSS {peak_rss_mib() / 1024:.2f} GiB")
    print(f"  {1 / per_step:.2f} it/s ({per_step * 1000:.0f} ms per step over {len(stamps) - 1} steps); {memory}")
    model_management.unload_all_models()
    del model
    model_management.soft_empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="sampling steps timed on the tiny model")
    parser.add_argument("--size", type=int, default=256, help="image size of the tiny model's txt2img")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the tiny workflow; the fastest counts")
    parser.add_argument("--full-steps", type=int, default=20, help="steps timed on the full-size UNets")
    parser.add_argument("--full-size-device", choices=["cuda", "cpu"], default="cuda",
                        help="where to run the full-size UNets (cpu: to check the code path, slowly)")
    parser.add_argument("--full-size", type=int, default=None,
                        help="image size of the full-size runs (default 512 for SD1.5, 1024 for SDXL)")
    parser.add_argument("--models", nargs="+", choices=list(full_size_configs()), default=list(full_size_configs()),
                        help="which full-size UNets to run")
    parser.add_argument("--skip-tiny", action="store_true", help="only the full-size UNets")
    options = parser.parse_args()

    if not options.skip_tiny:
        asyncio.run(tiny_cpu(options.steps, options.size, options.repeats))
    if options.full_size_device == "cuda" and not torch.cuda.is_available():
        print("Full-size SD1.5 and SDXL: skipped, no CUDA device (torch.cuda.is_available() is False)")
        return
    from comfyui_core_nodes import options as plugin_options

    plugin_options.set_started_configuration({**plugin_options.DEFAULTS, "preview_method": "none",
                                              "cpu": options.full_size_device == "cpu"})
    try:
        with torch.inference_mode():
            for name in options.models:
                full_size(name, options.full_steps, options.full_size_device, options.full_size)
    finally:
        plugin_options.set_started_configuration(None)


if __name__ == "__main__":
    main()
