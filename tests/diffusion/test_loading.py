"""Reading model files: memory-mapped safetensors, --disable-mmap, weights_only pickles, dtypes per flag."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

import fixtures
from comfyui_core_nodes import model_management, options
from comfyui_core_nodes.loading import LDM_EXTRA_KEYS, ModelFileError, load_torch_file
from comfyui_core_nodes.sd import load_checkpoint_guess_config


@pytest.fixture
def configure():
    def apply(**values):
        options.set_started_configuration({**options.DEFAULTS, "cpu": True, **values})
        model_management.reset_device_state()

    yield apply
    options.set_started_configuration(None)
    model_management.reset_device_state()


def mapped_files() -> str:
    with open("/proc/self/maps") as maps:
        return maps.read()


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux's /proc/self/maps")
def test_safetensors_are_memory_mapped_unless_disabled(tmp_path, configure):
    path = fixtures.save_state_dict(fixtures.vae_state_dict(), tmp_path / "mapped.safetensors")
    configure()
    sd = load_torch_file(path)
    assert str(path) in mapped_files()
    del sd
    configure(disable_mmap=True)
    copied = load_torch_file(path)
    assert str(path) not in mapped_files() and len(copied) == len(fixtures.vae_state_dict())


def test_pickled_checkpoints_load_weights_only(tmp_path, configure):
    configure()
    sd = fixtures.checkpoint_state_dict("sd1", text_encoders=False)
    sd.update({key: torch.zeros(1000) for key in LDM_EXTRA_KEYS})
    path = fixtures.save_state_dict(sd, tmp_path / "legacy.ckpt")
    model, clip, vae, _ = load_checkpoint_guess_config(str(path))
    assert model.model.model_config.family == "sd1" and clip is None and vae is not None

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo should never run",))

    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": {"x": Payload()}}))
    with pytest.raises(ModelFileError, match="weights_only=True"):
        load_torch_file(evil)
    (tmp_path / "text.safetensors").write_text("hello")
    with pytest.raises(ModelFileError, match="text.safetensors"):
        load_torch_file(tmp_path / "text.safetensors")


def test_weights_are_converted_to_the_device_dtype(tmp_path, configure):
    configure()
    half = {key: value.half() for key, value in fixtures.checkpoint_state_dict("sd1").items()
            if value.is_floating_point()}
    path = fixtures.save_state_dict(half, tmp_path / "half.safetensors")
    model, clip, vae, _ = load_checkpoint_guess_config(str(path))
    # On the CPU the UNet and VAE compute in fp32 whatever the file holds.
    assert model.model_dtype() == torch.float32 and model.model.manual_cast_dtype is None
    assert vae.vae_dtype == torch.float32
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    context = torch.randn(1, 77, fixtures.TEXT_WIDTH, generator=torch.Generator().manual_seed(1))
    model_management.load_models_gpu([model])
    reference = model.model.apply_model(x, torch.tensor([2.0]), c_crossattn=context)

    for flag, stored in (("fp16_unet", torch.float16), ("fp8_e4m3fn_unet", torch.float8_e4m3fn)):
        configure(**{flag: True})
        flagged, _, _, _ = load_checkpoint_guess_config(str(path), output_clip=False, output_vae=False)
        # Stored in the flag's dtype, computed in fp32 by casting each layer's weights.
        assert flagged.model_dtype() == stored and flagged.model.manual_cast_dtype == torch.float32
        model_management.load_models_gpu([flagged])
        out = flagged.model.apply_model(x, torch.tensor([2.0]), c_crossattn=context)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        tolerance = 1e-3 if stored == torch.float16 else 0.5
        assert (out - reference).abs().mean() < tolerance
