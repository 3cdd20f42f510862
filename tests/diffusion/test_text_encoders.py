"""Text encoders: real checkpoint layouts load (meta device), tiny encoders compute as CLIP does."""
from __future__ import annotations


import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from comfyui_core_nodes.text_encoders import (
    FAMILIES,
    TextEncoderLoadError,
    checkpoint_state_dict,
    classify_text_encoder,
    detect_checkpoint_family,
    load_from_checkpoint,
    load_text_encoder_files,
    load_text_encoder_state_dicts,
    text_encoder_key_map,
)
from comfyui_core_nodes.text_encoders.encoder import ClipStack
from comfyui_core_nodes.text_encoders.loading import CHECKPOINT_LAYOUTS, build_encoder, to_transformers_layout
from comfyui_core_nodes.text_encoders.model import CLIP_L, OPEN_CLIP_BIGG, OPEN_CLIP_H, convert_to_open_clip
from comfyui_core_nodes.text_encoders.tokenizer import PromptTokenizer, TokenizerSpec
import fixtures
from te_fixtures import tiny_clip_l_state_dict, tiny_open_clip_state_dict

SDXL_L, SDXL_G = "conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."


def manifest_state_dict(name: str) -> dict[str, torch.Tensor]:
    """Meta tensors with exactly the keys and shapes of a released file, in its fp16 form."""
    return fixtures.manifest_state_dict(name, dtype=torch.float16)


def encoder_weights(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


@pytest.mark.parametrize(("manifest", "family", "configs"), [
    ("sd15", "sd1", {"l": CLIP_L}),
    ("sd21_768v", "sd2", {"h": OPEN_CLIP_H}),
    ("sdxl_base", "sdxl", {"l": CLIP_L, "g": OPEN_CLIP_BIGG}),
    ("sdxl_refiner", "sdxl_refiner", {"g": OPEN_CLIP_BIGG}),
])
def test_released_checkpoint_layouts_load_every_text_encoder_key(manifest, family, configs) -> None:
    state_dict = manifest_state_dict(manifest)
    assert detect_checkpoint_family(state_dict) == family
    prefixes = dict(CHECKPOINT_LAYOUTS)[family]
    for spec in FAMILIES[family].encoders:
        original = encoder_weights(state_dict, prefixes[spec.key])
        weights = to_transformers_layout(original)
        encoder = build_encoder(spec, weights, dtype=None, device=None)
        assert encoder.transformer.config == configs[spec.key]
        # Every module key is in the file (after conversion), and every file key lands in the module.
        loaded = {("transformer." + k if k != "logit_scale" else k): v for k, v in weights.items()}
        assert set(loaded) == set(encoder.state_dict())
        encoder.load_state_dict(loaded, strict=True, assign=True)


@pytest.mark.parametrize("manifest", ["sd15", "sd21_768v", "sdxl_base", "sdxl_refiner"])
def test_saving_gives_back_the_released_keys_and_shapes(manifest) -> None:
    state_dict = manifest_state_dict(manifest)
    family = detect_checkpoint_family(state_dict)
    prefixes = dict(CHECKPOINT_LAYOUTS)[family]
    saved: dict[str, torch.Tensor] = {}
    for spec in FAMILIES[family].encoders:
        weights = to_transformers_layout(encoder_weights(state_dict, prefixes[spec.key]))
        if spec.key == "l":
            weights.pop("text_projection.weight")
            weights.pop("logit_scale")
            weights["text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
        else:
            weights = convert_to_open_clip(weights)
        saved.update({prefixes[spec.key] + k: v for k, v in weights.items()})
    released = {k: tuple(v.shape) for k, v in state_dict.items() if k.startswith(tuple(prefixes.values()))}
    assert {k: tuple(v.shape) for k, v in saved.items()} == released


def test_the_standalone_clip_l_file_is_clip_l() -> None:
    state_dict = manifest_state_dict("clip_l")
    assert classify_text_encoder(state_dict) == "l"
    assert "text_projection.weight" in to_transformers_layout(state_dict)


def test_checkpoints_without_text_encoders_give_none() -> None:
    assert load_from_checkpoint({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}) is None


# --- tiny encoders against straightforward reference computations -----------------------------------

def reference_clip_l(sd: dict[str, torch.Tensor], tokens: torch.Tensor, heads: int) -> list[torch.Tensor]:
    """Hidden states after each layer, by the textbook formulas (quick GELU, causal softmax attention)."""
    p = "text_model."
    x = sd[p + "embeddings.token_embedding.weight"][tokens] + sd[p + "embeddings.position_embedding.weight"]
    length, width = x.shape[-2:]
    causal = torch.ones(length, length, dtype=torch.bool).triu(1)
    states = []
    n = 0
    while f"{p}encoder.layers.{n}.mlp.fc1.weight" in sd:
        layer = f"{p}encoder.layers.{n}."

        def lin(name, t):
            return t @ sd[layer + name + ".weight"].T + sd[layer + name + ".bias"]

        y = F.layer_norm(x, (width,), sd[layer + "layer_norm1.weight"], sd[layer + "layer_norm1.bias"])
        q, k, v = (lin(f"self_attn.{name}", y).unflatten(-1, (heads, -1)).transpose(-3, -2)
                   for name in ("q_proj", "k_proj", "v_proj"))
        scores = (q @ k.transpose(-1, -2)) / (q.shape[-1] ** 0.5)
        attention = scores.masked_fill(causal, float("-inf")).softmax(-1) @ v
        x = x + lin("self_attn.out_proj", attention.transpose(-3, -2).flatten(-2))
        y = F.layer_norm(x, (width,), sd[layer + "layer_norm2.weight"], sd[layer + "layer_norm2.bias"])
        h = lin("mlp.fc1", y)
        x = x + lin("mlp.fc2", h * torch.sigmoid(1.702 * h))
        states.append(x)
        n += 1
    return states


def reference_open_clip(sd: dict[str, torch.Tensor], tokens: torch.Tensor, heads: int) -> list[torch.Tensor]:
    """Hidden states after each residual block, with torch's MultiheadAttention on the OpenCLIP weights."""
    x = sd["token_embedding.weight"][tokens] + sd["positional_embedding"]
    width = x.shape[-1]
    mask = torch.full((x.shape[-2], x.shape[-2]), float("-inf")).triu(1)
    states = []
    n = 0
    while f"transformer.resblocks.{n}.ln_1.weight" in sd:
        block = f"transformer.resblocks.{n}."
        attention = torch.nn.MultiheadAttention(width, heads, batch_first=True)
        attention.load_state_dict({"in_proj_weight": sd[block + "attn.in_proj_weight"],
                                   "in_proj_bias": sd[block + "attn.in_proj_bias"],
                                   "out_proj.weight": sd[block + "attn.out_proj.weight"],
                                   "out_proj.bias": sd[block + "attn.out_proj.bias"]})
        y = F.layer_norm(x, (width,), sd[block + "ln_1.weight"], sd[block + "ln_1.bias"])
        x = x + attention(y, y, y, attn_mask=mask, need_weights=False)[0]
        y = F.layer_norm(x, (width,), sd[block + "ln_2.weight"], sd[block + "ln_2.bias"])
        h = F.linear(y, sd[block + "mlp.c_fc.weight"], sd[block + "mlp.c_fc.bias"])
        x = x + F.linear(F.gelu(h), sd[block + "mlp.c_proj.weight"], sd[block + "mlp.c_proj.bias"])
        states.append(x)
        n += 1
    return states


def tiny_stack(family: str, widths: dict[str, int] | None = None) -> tuple[ClipStack, PromptTokenizer]:
    """A tiny float32 stack of ``family`` and its tokenizer, on the CPU."""
    widths = widths or {}
    makers = {
        "l": lambda: tiny_clip_l_state_dict(width=widths.get("l", 32)),
        "h": lambda: tiny_open_clip_state_dict(width=widths.get("h", 32)),
        "g": lambda: tiny_open_clip_state_dict(width=widths.get("g", 48), heads=3),
    }
    spec = FAMILIES[family]
    encoders = [build_encoder(s, to_transformers_layout(makers[s.key]()), torch.float32, torch.device("cpu"))
                for s in spec.encoders]
    tokenizer_specs = [TokenizerSpec(key, f"clip_{key}", widths.get(key, 32), pad_with_end=key == "l")
                       for key in spec.tokenizer_keys]
    return ClipStack(encoders, spec.pooled_from), PromptTokenizer(tokenizer_specs, embedding_directory=[])


def test_clip_l_matches_the_reference_computation() -> None:
    stack, tokenizer = tiny_stack("sd1")
    tokens = tokenizer.tokenize_with_weights("a photo of a cat")
    cond, pooled = stack.encode_token_weights(tokens)
    ids = torch.tensor([[t for t, _ in tokens["l"][0]]])
    sd = tiny_clip_l_state_dict()
    states = reference_clip_l(sd, ids, heads=2)
    final = F.layer_norm(states[-1], (32,), sd["text_model.final_layer_norm.weight"],
                         sd["text_model.final_layer_norm.bias"])
    assert cond.shape == (1, 77, 32) and pooled.shape == (1, 32)
    torch.testing.assert_close(cond, final, rtol=1e-5, atol=1e-5)
    # SD1 pools the last layer at the first end token, without the projection.
    torch.testing.assert_close(pooled, final[:, 6], rtol=1e-5, atol=1e-5)


def test_clip_set_last_layer_takes_an_earlier_layer_through_the_final_norm() -> None:
    stack, tokenizer = tiny_stack("sd1")
    tokens = tokenizer.tokenize_with_weights("a photo of a cat")
    sd = tiny_clip_l_state_dict()
    states = reference_clip_l(sd, torch.tensor([[t for t, _ in tokens["l"][0]]]), heads=2)
    stack.set_clip_options({"layer": -2})
    cond, _ = stack.encode_token_weights(tokens)
    expected = F.layer_norm(states[-2], (32,), sd["text_model.final_layer_norm.weight"],
                            sd["text_model.final_layer_norm.bias"])
    torch.testing.assert_close(cond, expected, rtol=1e-5, atol=1e-5)
    # Beyond the encoder's depth means the last layer again.
    stack.set_clip_options({"layer": -24})
    assert torch.equal(stack.encode_token_weights(tokens)[0], stack_last(tokens))


def stack_last(tokens) -> torch.Tensor:
    stack, _ = tiny_stack("sd1")
    return stack.encode_token_weights(tokens)[0]


def test_sdxl_joins_the_penultimate_layers_and_pools_bigg_through_its_projection() -> None:
    stack, tokenizer = tiny_stack("sdxl")
    tokens = tokenizer.tokenize_with_weights("a photo of a cat")
    cond, pooled = stack.encode_token_weights(tokens)
    assert cond.shape == (1, 77, 32 + 48) and pooled.shape == (1, 48)
    l_ids = torch.tensor([[t for t, _ in tokens["l"][0]]])
    g_ids = torch.tensor([[t for t, _ in tokens["g"][0]]])
    l_states = reference_clip_l(tiny_clip_l_state_dict(), l_ids, heads=2)
    g_sd = tiny_open_clip_state_dict(width=48, heads=3)
    g_states = reference_open_clip(g_sd, g_ids, heads=3)
    # Penultimate layers without the final norm.
    torch.testing.assert_close(cond[..., :32], l_states[-2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cond[..., 32:], g_states[-2], rtol=1e-5, atol=1e-5)
    final = F.layer_norm(g_states[-1], (48,), g_sd["ln_final.weight"], g_sd["ln_final.bias"])
    torch.testing.assert_close(pooled, final[:, 6] @ g_sd["text_projection"], rtol=1e-5, atol=1e-5)


def test_openclip_pads_with_zero_and_still_pools_at_the_end_token() -> None:
    stack, tokenizer = tiny_stack("sd2")
    tokens = tokenizer.tokenize_with_weights("a cat")
    assert [t for t, _ in tokens["h"][0]][3:6] == [49407, 0, 0]
    cond, pooled = stack.encode_token_weights(tokens)
    sd = tiny_open_clip_state_dict()
    states = reference_open_clip(sd, torch.tensor([[t for t, _ in tokens["h"][0]]]), heads=2)
    expected = F.layer_norm(states[-2], (32,), sd["ln_final.weight"], sd["ln_final.bias"])
    torch.testing.assert_close(cond, expected, rtol=1e-5, atol=1e-5)
    final = F.layer_norm(states[-1], (32,), sd["ln_final.weight"], sd["ln_final.bias"])
    torch.testing.assert_close(pooled, final[:, 3] @ sd["text_projection"], rtol=1e-5, atol=1e-5)


def test_weighted_tokens_move_away_from_the_empty_prompt() -> None:
    stack, tokenizer = tiny_stack("sd1")
    plain, _ = stack.encode_token_weights(tokenizer.tokenize_with_weights("a red cat"))
    weighted, _ = stack.encode_token_weights(tokenizer.tokenize_with_weights("a (red:1.5) cat"))
    empty, _ = stack.encode_token_weights(tokenizer.tokenize_with_weights(""))
    expected = plain.clone()
    expected[0, 2] = (plain[0, 2] - empty[0, 2]) * 1.5 + empty[0, 2]
    torch.testing.assert_close(weighted, expected, rtol=0, atol=1e-6)
    assert torch.equal(weighted[0, :2], plain[0, :2]) and torch.equal(weighted[0, 3:], plain[0, 3:])


def test_long_prompts_concatenate_chunks_and_pool_the_first() -> None:
    stack, tokenizer = tiny_stack("sd1")
    tokens = tokenizer.tokenize_with_weights("cat " * 100)
    cond, pooled = stack.encode_token_weights(tokens)
    first, first_pooled = stack.encode_token_weights({"l": tokens["l"][:1]})
    assert cond.shape == (1, 154, 32)
    torch.testing.assert_close(cond[:, :77], first, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pooled, first_pooled, rtol=1e-5, atol=1e-6)


def test_textual_inversion_vectors_replace_token_embeddings(tmp_path) -> None:
    stack, _ = tiny_stack("sd1")
    vector = stack.clip_l.transformer.get_input_embeddings().weight[2368].clone()
    safetensors.torch.save_file({"emb_params": vector.unsqueeze(0)}, str(tmp_path / "cat.safetensors"))
    tokenizer = PromptTokenizer([TokenizerSpec("l", "clip_l", 32, True)], embedding_directory=[str(tmp_path)])
    # An embedding holding the "cat" token's own vector encodes exactly as the word does.
    via_embedding, _ = stack.encode_token_weights(tokenizer.tokenize_with_weights("a embedding:cat"))
    via_word, _ = stack.encode_token_weights(tokenizer.tokenize_with_weights("a cat"))
    torch.testing.assert_close(via_embedding, via_word, rtol=0, atol=1e-6)


def test_tiny_encoders_are_deterministic_and_prompts_differ() -> None:
    stack, tokenizer = tiny_stack("sdxl")
    one = stack.encode_token_weights(tokenizer.tokenize_with_weights("a cat"))
    two = stack.encode_token_weights(tokenizer.tokenize_with_weights("a cat"))
    other = stack.encode_token_weights(tokenizer.tokenize_with_weights("a dog"))
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
    assert not torch.equal(one[0], other[0])


# --- files, families and errors ---------------------------------------------------------------------

def test_text_encoder_files_are_classified_by_depth_and_layout() -> None:
    assert classify_text_encoder(tiny_clip_l_state_dict()) == "l"
    assert classify_text_encoder(tiny_open_clip_state_dict()) == "g"
    assert classify_text_encoder(tiny_open_clip_state_dict(width=64, heads=4)) == "g"
    with pytest.raises(TextEncoderLoadError, match="not a CLIP text encoder"):
        classify_text_encoder({"encoder.block.0.weight": torch.zeros(2)})


def test_unsupported_clip_types_and_wrong_pairs_are_clear_errors() -> None:
    with pytest.raises(TextEncoderLoadError, match="'flux' is not supported"):
        load_text_encoder_state_dicts([tiny_clip_l_state_dict()], "flux")
    with pytest.raises(TextEncoderLoadError, match="takes 2 text encoder file"):
        load_text_encoder_state_dicts([tiny_clip_l_state_dict()], "sdxl")
    with pytest.raises(TextEncoderLoadError, match="needs a CLIP-L and a CLIP-G"):
        load_text_encoder_state_dicts([tiny_clip_l_state_dict(), tiny_clip_l_state_dict(seed=3)], "sdxl")


def test_a_checkpoint_missing_encoder_weights_names_them() -> None:
    state_dict = tiny_clip_l_state_dict("cond_stage_model.transformer.")
    del state_dict["cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc2.bias"]
    with pytest.raises(TextEncoderLoadError, match="layers.1.mlp.fc2.bias"):
        load_from_checkpoint(state_dict, embedding_directory=[])


# --- the CLIP object ---------------------------------------------------------------------------------

def tiny_checkpoint(family: str) -> dict[str, torch.Tensor]:
    """The text-encoder part of a tiny single-file checkpoint of ``family``."""
    if family == "sd1":
        return tiny_clip_l_state_dict("cond_stage_model.transformer.")
    if family == "sd2":
        return tiny_open_clip_state_dict("cond_stage_model.model.")
    if family == "sdxl":
        return {**tiny_clip_l_state_dict(SDXL_L, position_ids=True),
                **tiny_open_clip_state_dict(SDXL_G, width=48, heads=3)}
    return tiny_open_clip_state_dict("conditioner.embedders.0.model.", width=48, heads=3)


@pytest.mark.parametrize(("family", "width", "pooled"), [
    ("sd1", 32, 32), ("sd2", 32, 32), ("sdxl", 32 + 48, 48), ("sdxl_refiner", 48, 48)])
def test_checkpoints_give_a_clip_that_encodes_to_conditioning(family, width, pooled) -> None:
    clip = load_from_checkpoint(tiny_checkpoint(family), embedding_directory=[])
    assert clip.family == family
    conditioning = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a cat"))
    assert len(conditioning) == 1
    cond, options = conditioning[0]
    assert cond.shape == (1, 77, width) and cond.dtype == torch.float32
    assert list(options) == ["pooled_output"] and options["pooled_output"].shape == (1, pooled)
    again = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a cat"))
    assert torch.equal(cond, again[0][0])


def test_clip_encodes_in_float32_from_half_precision_weights() -> None:
    clip = load_from_checkpoint(tiny_checkpoint("sd1"), embedding_directory=[])
    assert clip.cond_stage_model.dtypes == {torch.float16}
    cond, pooled = clip.encode_from_tokens(clip.tokenize("a cat"), return_pooled=True)
    assert cond.dtype == pooled.dtype == torch.float32
    assert clip.encode("a cat").shape == (1, 77, 32)


def test_clip_layer_is_per_clone_and_reaches_the_encoders() -> None:
    clip = load_from_checkpoint(tiny_checkpoint("sd1"), embedding_directory=[])
    tokens = clip.tokenize("a cat")
    last = clip.encode_from_tokens(tokens)
    skipped = clip.clone()
    skipped.clip_layer(-2)
    penultimate = skipped.encode_from_tokens(tokens)
    assert not torch.equal(last, penultimate)
    assert torch.equal(clip.encode_from_tokens(tokens), last)
    skipped.clip_layer(-1)
    assert torch.equal(skipped.encode_from_tokens(tokens), last)


def test_unprojected_pooled_output_on_request() -> None:
    clip = load_from_checkpoint(tiny_checkpoint("sdxl_refiner"), embedding_directory=[])
    tokens = clip.tokenize("a cat")
    projected = clip.encode_from_tokens_scheduled(tokens)[0][1]["pooled_output"]
    plain = clip.encode_from_tokens_scheduled(tokens, unprojected=True)[0][1]["pooled_output"]
    g = clip.cond_stage_model.clip_g.transformer.text_projection.weight.float()
    torch.testing.assert_close(projected, plain @ g.T, rtol=1e-4, atol=1e-4)


def test_text_encoder_files_load_alone_and_as_an_sdxl_pair(tmp_path) -> None:
    clip_l = tmp_path / "clip_l.safetensors"
    clip_g = tmp_path / "clip_g.safetensors"
    safetensors.torch.save_file(tiny_clip_l_state_dict(position_ids=False), str(clip_l))
    safetensors.torch.save_file(tiny_open_clip_state_dict(width=48, heads=3), str(clip_g))
    single = load_text_encoder_files([str(clip_l)], "stable_diffusion", embedding_directory=[])
    assert single.family == "sd1"
    assert single.encode("a cat").shape == (1, 77, 32)
    pair = load_text_encoder_files([str(clip_g), str(clip_l)], "sdxl", embedding_directory=[])
    assert pair.family == "sdxl"
    cond, pooled = pair.encode_from_tokens(pair.tokenize("a cat"), return_pooled=True)
    assert cond.shape == (1, 77, 80) and pooled.shape == (1, 48)
    # The same weights from a checkpoint give the same conditioning.
    from_checkpoint = load_from_checkpoint(tiny_checkpoint("sdxl"), embedding_directory=[])
    assert torch.equal(from_checkpoint.encode_from_tokens(pair.tokenize("a cat")), cond)


def test_lora_key_map_covers_kohya_and_diffusers_names() -> None:
    sd1 = load_from_checkpoint(tiny_checkpoint("sd1"), embedding_directory=[])
    keys = set(sd1.cond_stage_model.state_dict())
    key_map = text_encoder_key_map(sd1)
    assert set(key_map.values()) <= keys
    q = "clip_l.transformer.text_model.encoder.layers.1.self_attn.q_proj.weight"
    assert key_map["lora_te_text_model_encoder_layers_1_self_attn_q_proj"] == q
    assert key_map["text_encoder.text_model.encoder.layers.1.self_attn.q_proj"] == q
    sdxl = load_from_checkpoint(tiny_checkpoint("sdxl"), embedding_directory=[])
    key_map = text_encoder_key_map(sdxl)
    assert key_map["lora_te1_text_model_encoder_layers_0_mlp_fc1"] == \
        "clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight"
    assert key_map["lora_te2_text_model_encoder_layers_0_mlp_fc1"] == \
        "clip_g.transformer.text_model.encoder.layers.0.mlp.fc1.weight"
    assert key_map["text_encoder_2.text_model.encoder.layers.1.self_attn.out_proj"] == \
        "clip_g.transformer.text_model.encoder.layers.1.self_attn.out_proj.weight"
    assert set(key_map.values()) <= set(sdxl.cond_stage_model.state_dict())
    assert sdxl.add_patches({q: ("diff", (torch.zeros(32, 32),))}) == [q]


def test_every_kohya_text_encoder_module_of_a_real_lora_resolves() -> None:
    modules = {key.split(".")[0] for key, _ in fixtures.manifest("lora_sd15_kohya") if key.startswith("lora_te_")}
    state_dict = manifest_state_dict("sd15")
    prefix = "cond_stage_model.transformer."
    encoder = build_encoder(FAMILIES["sd1"].encoders[0], to_transformers_layout(encoder_weights(state_dict, prefix)),
                            dtype=None, device=None)
    key_map = text_encoder_key_map(ClipStack([encoder], "l"))
    assert len(modules) == 72
    assert all(module in key_map for module in modules)


def test_saving_a_tiny_sdxl_clip_gives_the_checkpoint_layout_back() -> None:
    original = tiny_checkpoint("sdxl")
    clip = load_from_checkpoint(original, embedding_directory=[])
    saved = checkpoint_state_dict(clip)
    assert set(saved) == set(original)
    for key, value in original.items():
        assert saved[key].shape == value.shape
        if value.is_floating_point():
            torch.testing.assert_close(saved[key].float(), value.half().float())


def test_a_text_encoder_lora_changes_the_clone_and_leaves_the_base_as_it_was() -> None:
    from comfyui_core_nodes.lora import load_lora_for_models

    clip = load_from_checkpoint(tiny_checkpoint("sdxl"), embedding_directory=[])
    tokens = clip.tokenize("a cat")
    before = clip.encode_from_tokens(tokens)
    generator = torch.Generator().manual_seed(7)
    lora = {}
    for name, width in (("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", 32),
                        ("lora_te2_text_model_encoder_layers_0_mlp_fc1", 48)):
        out_width = width if "q_proj" in name else 4 * width
        lora[f"{name}.lora_down.weight"] = torch.randn(4, width, generator=generator)
        lora[f"{name}.lora_up.weight"] = torch.randn(out_width, 4, generator=generator)
        lora[f"{name}.alpha"] = torch.tensor(4.0)
    _, patched = load_lora_for_models(None, clip, lora, 0.0, 1.0)
    after = patched.encode_from_tokens(tokens)
    assert not torch.equal(after[..., :32], before[..., :32])
    assert not torch.equal(after[..., 32:], before[..., 32:])
    assert torch.equal(clip.encode_from_tokens(tokens), before)
    assert torch.equal(patched.encode_from_tokens(tokens), after)
