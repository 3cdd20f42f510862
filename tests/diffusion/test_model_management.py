"""Model management: device choice and dtypes from the options, memory accounting on a device backend
contributed by a small plugin, partial loading with per-layer streaming, and the attention choice."""
from __future__ import annotations

from typing import Any, Optional

import pytest
import torch

import fixtures
from comfy import devices as kernel_devices
from comfy.hookspecs import hookimpl
from comfy.plugins import create_plugin_manager, set_plugin_manager
from comfyui_core_nodes import attention, model_management, options
from comfyui_core_nodes import plugin as core_plugin
from comfyui_core_nodes.detection import model_config_for
from comfyui_core_nodes.loading import load_into
from comfyui_core_nodes.model_base import create_model
from comfyui_core_nodes.model_patcher import ModelPatcher

GB = 1024 ** 3


class SharedMemoryDevice:
    """A device backend whose memory is what the models loaded on it leave free ("meta" tensors hold no data)."""
    name = "meta"

    def __init__(self, total: int):
        self.total = total
        self.models: list[SizedModel] = []

    def is_available(self) -> bool:
        return True

    def devices(self) -> list[torch.device]:
        return [torch.device("meta")]

    def total_memory(self, device: Any) -> int:
        return self.total

    def free_memory(self, device: Any) -> int:
        return self.total - sum(model.loaded for model in self.models)

    def supports_dtype(self, device: Any, dtype: Any) -> bool:
        return dtype in (torch.float32, torch.float16)


class SizedModel:
    """A model of a given size that loads onto the shared-memory device (model management's protocol)."""

    def __init__(self, name: str, size: int, device: SharedMemoryDevice):
        self.name, self.size, self.loaded = name, size, 0
        self.load_device, self.offload_device = torch.device("meta"), torch.device("cpu")
        self.loads: list[int] = []
        device.models.append(self)

    def model_size(self) -> int:
        return self.size

    def loaded_size(self) -> int:
        return self.loaded

    def current_loaded_device(self) -> Optional[torch.device]:
        return self.load_device if self.loaded else self.offload_device

    def is_clone(self, other: Any) -> bool:
        return False

    def model_patches_models(self) -> list:
        return []

    def model_patches_to(self, device: Any) -> None:
        return None

    def load(self, device_to: torch.device, lowvram_model_memory: int = 0, force_patch_weights: bool = False,
             full_load: bool = False) -> None:
        self.loaded = self.size if full_load or lowvram_model_memory <= 0 else min(self.size, lowvram_model_memory)
        self.loads.append(self.loaded)

    def partially_unload(self, device_to: torch.device, memory_to_free: int = 0) -> int:
        freed = min(self.loaded, memory_to_free)
        self.loaded -= freed
        return freed

    def detach(self, unpatch_all: bool = True) -> None:
        self.loaded = 0


class DevicePlugin:
    def __init__(self, backend: SharedMemoryDevice):
        self.backend = backend

    @hookimpl
    def comfyui_register_device_backends(self, register):
        register(self.backend.name, self.backend)


def configure(**values: Any) -> None:
    options.set_started_configuration({**options.DEFAULTS, "reserve_vram": 0.0, **values})
    model_management.reset_device_state()
    attention.reset_choice()


@pytest.fixture
def gpu():
    """An 8 GB device from a plugin, registered after the core plugin as a third-party one would be."""
    backend = SharedMemoryDevice(8 * GB)
    pm = create_plugin_manager(load_entrypoints=False)
    pm.register(core_plugin, "core_nodes")
    pm.register(DevicePlugin(backend), "shared_memory_device")
    set_plugin_manager(pm)
    configure()
    yield backend
    model_management.current_loaded_models.clear()
    set_plugin_manager(None)
    options.set_started_configuration(None)
    model_management.reset_device_state()
    attention.reset_choice()


def test_backends_come_from_the_hook(gpu):
    pm = create_plugin_manager(load_entrypoints=False)
    pm.register(core_plugin, "core_nodes")
    assert list(kernel_devices.device_backends(pm)) == ["cuda", "mps", "xpu", "cpu"]
    assert model_management.get_torch_device() == torch.device("meta")
    assert model_management.device_state().vram_state == model_management.VRAMState.NORMAL_VRAM
    configure(cpu=True)
    assert model_management.get_torch_device() == torch.device("cpu")
    assert model_management.vram_state == model_management.VRAMState.DISABLED


def test_models_that_fit_stay_and_the_oldest_gives_way(gpu):
    a, b, c = (SizedModel(name, 3 * GB, gpu) for name in "abc")
    model_management.load_models_gpu([a])
    model_management.load_models_gpu([b])
    assert (a.loaded, b.loaded) == (3 * GB, 3 * GB)
    model_management.load_models_gpu([c])
    # Only as much of the least recently used model moves out as the new one needs.
    assert c.loaded == 3 * GB and b.loaded == 3 * GB and 0 < a.loaded < 3 * GB
    assert model_management.loaded_models() == [c, b, a]
    model_management.load_models_gpu([a])
    assert a.loaded == 3 * GB and b.loaded < 3 * GB


def test_disable_smart_memory_unloads_everything_else(gpu):
    configure(disable_smart_memory=True)
    a, b, c = (SizedModel(name, 3 * GB, gpu) for name in "abc")
    for model in (a, b, c):
        model_management.load_models_gpu([model])
    assert (a.loaded, b.loaded, c.loaded) == (0, 0, 3 * GB)


def test_a_model_larger_than_memory_is_loaded_partly(gpu):
    big = SizedModel("big", 10 * GB, gpu)
    model_management.load_models_gpu([big])
    assert 0 < big.loaded < 8 * GB
    configure(novram=True)
    other = SizedModel("other", 1 * GB, gpu)
    model_management.load_models_gpu([other])
    assert other.loaded == 1  # every weight streamed
    model_management.unload_all_models()
    assert big.loaded == other.loaded == 0 and model_management.current_loaded_models == []


def test_lowvram_highvram_and_gpu_only(gpu):
    configure(highvram=True)
    assert model_management.unet_offload_device() == torch.device("meta")
    configure(gpu_only=True)
    assert model_management.intermediate_device() == torch.device("meta")
    assert model_management.text_encoder_offload_device() == torch.device("meta")
    configure(lowvram=True)
    assert model_management.vram_state == model_management.VRAMState.LOW_VRAM
    gpu.total = 3 * GB
    configure()
    # Small cards stream by default, unless asked not to.
    assert model_management.vram_state == model_management.VRAMState.LOW_VRAM
    configure(normalvram=True)
    assert model_management.vram_state == model_management.VRAMState.NORMAL_VRAM


def test_dtypes_follow_the_device_and_the_flags(gpu):
    assert model_management.unet_dtype() == torch.float16
    assert model_management.vae_dtype(allowed_dtypes=(torch.bfloat16, torch.float32)) == torch.float32
    configure(force_fp32=True)
    assert model_management.unet_dtype() == torch.float32
    configure(bf16_unet=True, fp16_vae=True, fp32_text_enc=True)
    assert model_management.unet_dtype() == torch.bfloat16
    assert model_management.vae_dtype() == torch.float16
    assert model_management.text_encoder_dtype() == torch.float32
    configure(cpu=True)
    assert model_management.unet_dtype() == torch.float32
    assert model_management.unet_manual_cast(torch.float16, torch.device("cpu")) == torch.float32
    # ComfyUI stores text encoders in fp16 even on the CPU (computing in fp32).
    assert model_management.text_encoder_dtype(torch.device("cpu")) == torch.float16
    configure(cpu=True, fp8_e4m3fn_unet=True, cpu_vae=True)
    assert model_management.unet_dtype() == torch.float8_e4m3fn
    assert model_management.vae_device() == torch.device("cpu")


def test_attention_follows_the_device_and_options(gpu):
    configure(cpu=True)
    assert attention.chosen_attention() is attention.attention_sub_quad
    configure()  # a GPU-like device that is not cuda: ComfyUI's sub-quadratic default too
    assert attention.chosen_attention() is attention.attention_sub_quad
    configure(use_pytorch_cross_attention=True)
    assert attention.chosen_attention() is attention.attention_pytorch
    configure(use_split_cross_attention=True)
    assert attention.chosen_attention() is attention.attention_split
    configure(use_sage_attention=True)  # the package is not installed: the default, with a warning
    assert attention.chosen_attention() is attention.attention_sub_quad


def test_attention_implementations_agree():
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 300, 64, generator=generator) for _ in range(3))
    expected = attention.attention_basic(q, k, v, heads=4)
    for function in (attention.attention_pytorch, attention.attention_split, attention.attention_sub_quad):
        assert torch.allclose(function(q, k, v, heads=4), expected, atol=1e-5)
    key_t = k.reshape(2, 300, 4, 16).permute(0, 2, 3, 1).reshape(8, 16, 300)
    split = attention._split_heads
    chunked = attention._sub_quad(split(q, 4), key_t, split(v, 4), query_chunk=64, kv_chunk=50, upcast=False,
                                  mask=None)
    assert torch.allclose(chunked, split(expected, 4), atol=1e-5)


def tiny_patcher() -> ModelPatcher:
    sd = fixtures.unet_state_dict("sd1", prefix="")
    config = model_config_for(sd)
    config.set_inference_dtype(torch.float32, None)
    model = create_model(config, device=torch.device("meta"))
    load_into(model.diffusion_model, sd, torch.float32)
    return ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def test_partial_loading_streams_layers_with_their_patches():
    patcher = tiny_patcher()
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    context = torch.randn(1, 77, fixtures.TEXT_WIDTH, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([3.0])
    patcher.load(torch.device("cpu"), full_load=True)
    plain = patcher.model.apply_model(x, sigma, c_crossattn=context)

    key = "diffusion_model.output_blocks.3.1.transformer_blocks.0.attn2.to_q.weight"
    patched = patcher.clone()
    patched.add_patches({key: (torch.ones_like(patcher.model.state_dict()[key]),)}, 0.5)
    patched.load(torch.device("cpu"), full_load=True)
    expected = patched.model.apply_model(x, sigma, c_crossattn=context)
    assert not torch.allclose(expected, plain)

    # Only a tenth of the weights fit: the rest stays put and is cast per call, the patch included.
    patched.load(torch.device("cpu"), lowvram_model_memory=patched.model_size() // 10)
    assert 0 < patched.loaded_size() < patched.model_size() and patched.lowvram_patch_counter() == 1
    assert torch.allclose(patched.model.apply_model(x, sigma, c_crossattn=context), expected, atol=1e-5)
    patched.unpatch_model()
    assert torch.allclose(patcher.model.apply_model(x, sigma, c_crossattn=context), plain)
