"""Initial noise drawn as ComfyUI draws it: one CPU generator seeded with the seed, batch_index aware."""
from __future__ import annotations

import torch

from comfyui_samplers.noise import Noise_EmptyNoise, Noise_RandomNoise, prepare_noise


def reference(shape, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator)


def test_noise_is_the_seeded_generators_first_draw():
    latent = torch.zeros(2, 4, 8, 8)
    assert torch.equal(prepare_noise(latent, 123), reference((2, 4, 8, 8), 123))


def test_same_seed_same_noise_other_seed_differs():
    latent = torch.zeros(1, 4, 16, 16)
    assert torch.equal(prepare_noise(latent, 5), prepare_noise(latent, 5))
    assert not torch.equal(prepare_noise(latent, 5), prepare_noise(latent, 6))


def test_large_seeds_are_accepted():
    latent = torch.zeros(1, 4, 4, 4)
    assert torch.equal(prepare_noise(latent, 0xffffffffffffffff), prepare_noise(latent, 0xffffffffffffffff))


def test_batch_index_takes_that_items_noise_from_a_full_batch():
    full = reference((4, 4, 8, 8), 9)  # what a batch of 4 gets
    single = prepare_noise(torch.zeros(1, 4, 8, 8), 9, [2])
    assert torch.equal(single[0], full[2])
    pair = prepare_noise(torch.zeros(2, 4, 8, 8), 9, [3, 1])
    assert torch.equal(pair[0], full[3]) and torch.equal(pair[1], full[1])
    repeated = prepare_noise(torch.zeros(2, 4, 8, 8), 9, [1, 1])
    assert torch.equal(repeated[0], full[1]) and torch.equal(repeated[1], full[1])


def test_noise_follows_the_latent_dtype_and_stays_on_the_cpu():
    noise = prepare_noise(torch.zeros(1, 4, 8, 8, dtype=torch.float16), 1)
    assert noise.dtype == torch.float16 and noise.device.type == "cpu"


def test_noise_objects_of_the_custom_sampling_nodes():
    latent = {"samples": torch.zeros(3, 4, 8, 8), "batch_index": [0, 2, 4]}
    random = Noise_RandomNoise(11)
    assert random.seed == 11
    assert torch.equal(random.generate_noise(latent), reference((5, 4, 8, 8), 11)[[0, 2, 4]])
    empty = Noise_EmptyNoise()
    assert empty.seed == 0 and torch.count_nonzero(empty.generate_noise(latent)) == 0
