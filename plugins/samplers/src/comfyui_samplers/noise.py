"""The initial noise of a sampling run, drawn exactly as ComfyUI draws it so seeds carry over."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

if TYPE_CHECKING:
    import torch


def prepare_noise(latent_image: torch.Tensor, seed: int, noise_inds: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Gaussian noise shaped like ``latent_image`` from the global CPU generator seeded with ``seed``.

    With ``noise_inds`` (a latent's ``batch_index``), item ``k`` of the batch gets the noise a
    full batch would have given at position ``noise_inds[k]``: the generator draws one sample per
    index up to the largest and keeps the ones asked for, so a single image taken out of a batch
    reproduces.
    """
    import torch

    generator = torch.manual_seed(seed)
    if noise_inds is None:
        return torch.randn(latent_image.size(), dtype=latent_image.dtype, layout=latent_image.layout,
                           generator=generator, device="cpu")
    wanted = sorted(set(noise_inds))
    sample_shape = [1] + list(latent_image.size())[1:]
    drawn: dict[int, torch.Tensor] = {}
    for index in range(wanted[-1] + 1):
        sample = torch.randn(sample_shape, dtype=latent_image.dtype, layout=latent_image.layout,
                             generator=generator, device="cpu")
        if index in wanted:
            drawn[index] = sample
    return torch.cat([drawn[index] for index in noise_inds], dim=0)


class Noise_EmptyNoise:
    """The NOISE of DisableNoise: zeros, so sampling starts from the latent itself."""
    seed = 0

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        import torch

        samples = input_latent["samples"]
        return torch.zeros(samples.shape, dtype=samples.dtype, layout=samples.layout, device="cpu")


class Noise_RandomNoise:
    """The NOISE of RandomNoise: ``prepare_noise`` with the latent's ``batch_index``."""

    def __init__(self, seed: int):
        self.seed = seed

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        return prepare_noise(input_latent["samples"], self.seed, input_latent.get("batch_index"))
