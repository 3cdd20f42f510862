"""Conditioning nodes: what they return (shapes, dict keys) and what /object_info says about them."""
from __future__ import annotations

import pytest
import safetensors.torch
import torch

from comfy import paths, paths_plugin
from comfy.nodes.object_info import node_info
from comfy.nodes.registry import NodeRegistry
from comfy.plugins import create_plugin_manager, set_plugin_manager
from comfyui_core_nodes import nodes_conditioning as nodes
from comfyui_core_nodes.text_encoders import load_from_checkpoint
from comfyui_core_nodes.text_encoders.vision import load_clip_vision_state_dict
from te_fixtures import tiny_clip_l_state_dict, tiny_clip_vision_state_dict, tiny_open_clip_state_dict

SDXL_L, SDXL_G = "conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."


@pytest.fixture
def models_folder(tmp_path):
    """ComfyUI's folder layout under tmp_path, resolved through a real plugin manager."""
    pm = create_plugin_manager(load_entrypoints=False)
    pm.register(paths_plugin, "local_models")
    set_plugin_manager(pm)
    paths.set_state(paths.FolderPaths.for_bases(str(tmp_path)))
    yield tmp_path / "models"
    set_plugin_manager(None)
    paths.set_state(None)


@pytest.fixture(scope="module")
def sd1_clip():
    return load_from_checkpoint(tiny_clip_l_state_dict("cond_stage_model.transformer."), embedding_directory=[])


@pytest.fixture(scope="module")
def sdxl_clip():
    state_dict = {**tiny_clip_l_state_dict(SDXL_L), **tiny_open_clip_state_dict(SDXL_G, width=48, heads=3)}
    return load_from_checkpoint(state_dict, embedding_directory=[])


@pytest.fixture(scope="module")
def refiner_clip():
    return load_from_checkpoint(tiny_open_clip_state_dict("conditioner.embedders.0.model.", width=48, heads=3),
                                embedding_directory=[])


def cond(width: int = 32, tokens: int = 77, value: float = 1.0, **options) -> list:
    return [[torch.full((1, tokens, width), value), options]]


def test_clip_text_encode_gives_one_conditioning_with_pooled_output(sd1_clip) -> None:
    (conditioning,) = nodes.CLIPTextEncode().encode(sd1_clip, "a photo of a cat")
    assert len(conditioning) == 1
    tensor, options = conditioning[0]
    assert tensor.shape == (1, 77, 32)
    assert set(options) == {"pooled_output"} and options["pooled_output"].shape == (1, 32)
    (long,) = nodes.CLIPTextEncode().encode(sd1_clip, "a photo of a cat, " * 20)
    assert long[0][0].shape == (1, 154, 32)


def test_clip_text_encode_without_a_clip_says_why() -> None:
    with pytest.raises(RuntimeError, match="does not contain a valid clip"):
        nodes.CLIPTextEncode().encode(None, "a cat")


def test_clip_text_encode_sdxl_adds_the_size_conditioning(sdxl_clip) -> None:
    output = nodes.CLIPTextEncodeSDXL.execute(sdxl_clip, 1024, 768, 0, 0, 1024, 768, "a cat", "a dog")
    (conditioning,) = output.args
    tensor, options = conditioning[0]
    assert tensor.shape == (1, 77, 32 + 48)
    assert options["pooled_output"].shape == (1, 48)
    assert {k: v for k, v in options.items() if k != "pooled_output"} == {
        "width": 1024, "height": 768, "crop_w": 0, "crop_h": 0, "target_width": 1024, "target_height": 768}


def test_clip_text_encode_sdxl_pads_the_shorter_prompt_with_empty_chunks(sdxl_clip) -> None:
    (conditioning,) = nodes.CLIPTextEncodeSDXL.execute(sdxl_clip, 1024, 1024, 0, 0, 1024, 1024,
                                                       "a cat, " * 40, "a dog").args
    assert conditioning[0][0].shape == (1, 154, 80)
    # The CLIP-L half of the second chunk is the empty prompt's encoding.
    empty_l = sdxl_clip.encode_from_tokens({"l": sdxl_clip.tokenize("")["l"], "g": sdxl_clip.tokenize("")["g"]})
    torch.testing.assert_close(conditioning[0][0][:, 77:, :32], empty_l[:, :, :32])


def test_clip_text_encode_sdxl_refiner_adds_the_aesthetic_score(refiner_clip) -> None:
    (conditioning,) = nodes.CLIPTextEncodeSDXLRefiner.execute(refiner_clip, 6.0, 1024, 1024, "a cat").args
    tensor, options = conditioning[0]
    assert tensor.shape == (1, 77, 48)
    assert {k: v for k, v in options.items() if k != "pooled_output"} == {
        "aesthetic_score": 6.0, "width": 1024, "height": 1024}


def test_clip_set_last_layer_changes_a_clone_only(sd1_clip) -> None:
    (skipped,) = nodes.CLIPSetLastLayer().set_last_layer(sd1_clip, -2)
    assert skipped is not sd1_clip and skipped.layer_idx == -2 and sd1_clip.layer_idx is None
    base = nodes.CLIPTextEncode().encode(sd1_clip, "a cat")[0][0][0]
    other = nodes.CLIPTextEncode().encode(skipped, "a cat")[0][0][0]
    assert not torch.equal(base, other)


def test_clip_loaders_read_the_text_encoders_folder(models_folder) -> None:
    folder = models_folder / "text_encoders"
    folder.mkdir(parents=True)
    safetensors.torch.save_file(tiny_clip_l_state_dict(position_ids=False), str(folder / "clip_l.safetensors"))
    safetensors.torch.save_file(tiny_open_clip_state_dict(width=48, heads=3), str(folder / "clip_g.safetensors"))
    declared = nodes.CLIPLoader.INPUT_TYPES()
    assert declared["required"]["clip_name"][0] == ["clip_g.safetensors", "clip_l.safetensors"]
    (clip,) = nodes.CLIPLoader().load_clip("clip_l.safetensors", "stable_diffusion")
    assert nodes.CLIPTextEncode().encode(clip, "a cat")[0][0][0].shape == (1, 77, 32)
    (pair,) = nodes.DualCLIPLoader().load_clip("clip_l.safetensors", "clip_g.safetensors", "sdxl", device="cpu")
    assert pair.patcher.load_device == torch.device("cpu")
    assert nodes.CLIPTextEncode().encode(pair, "a cat")[0][0][0].shape == (1, 77, 80)
    with pytest.raises(FileNotFoundError):
        nodes.CLIPLoader().load_clip("missing.safetensors", "stable_diffusion")
    with pytest.raises(ValueError, match="'sd3' is not supported"):
        nodes.CLIPLoader().load_clip("clip_l.safetensors", "sd3")


def test_conditioning_combine_and_concat() -> None:
    a, b = cond(value=1.0, pooled_output=torch.ones(1, 8)), cond(value=2.0)
    (combined,) = nodes.ConditioningCombine().combine(a, b)
    assert len(combined) == 2 and combined[0] is a[0] and combined[1] is b[0]
    (joined,) = nodes.ConditioningConcat().concat(a, cond(tokens=154, value=3.0))
    assert joined[0][0].shape == (1, 231, 32)
    assert torch.equal(joined[0][0][:, 77:], torch.full((1, 154, 32), 3.0))
    assert joined[0][1] == a[0][1] and joined[0][1] is not a[0][1]


def test_conditioning_average_blends_tensors_and_pooled_outputs() -> None:
    to = cond(value=1.0, pooled_output=torch.ones(1, 8))
    source = cond(value=3.0, pooled_output=torch.full((1, 8), 5.0))
    (averaged,) = nodes.ConditioningAverage().addWeighted(to, source, 0.25)
    assert torch.allclose(averaged[0][0], torch.full((1, 77, 32), 0.25 * 1 + 0.75 * 3))
    assert torch.allclose(averaged[0][1]["pooled_output"], torch.full((1, 8), 0.25 * 1 + 0.75 * 5))
    # A shorter source counts as zeros past its end; a longer one is cut.
    (padded,) = nodes.ConditioningAverage().addWeighted(cond(tokens=154, value=1.0), cond(value=3.0), 0.5)
    assert padded[0][0].shape == (1, 154, 32)
    assert torch.allclose(padded[0][0][:, 77:], torch.full((1, 77, 32), 0.5))
    # Without a pooled output of its own, the target takes the source's.
    (taken,) = nodes.ConditioningAverage().addWeighted(cond(), source, 0.5)
    assert torch.allclose(taken[0][1]["pooled_output"], torch.full((1, 8), 5.0))


def test_area_mask_range_and_zero_out_set_comfyui_keys() -> None:
    base = cond(pooled_output=torch.ones(1, 8))
    (area,) = nodes.ConditioningSetArea().append(base, 512, 256, 64, 128, 0.8)
    assert area[0][1]["area"] == (32, 64, 16, 8)
    assert area[0][1]["strength"] == 0.8 and area[0][1]["set_area_to_bounds"] is False
    assert "area" not in base[0][1]
    (percent,) = nodes.ConditioningSetAreaPercentage().append(base, 0.5, 0.25, 0.1, 0.2, 1.0)
    assert percent[0][1]["area"] == ("percentage", 0.25, 0.5, 0.2, 0.1)
    (masked,) = nodes.ConditioningSetMask().append(base, torch.ones(64, 64), "mask bounds", 0.7)
    assert masked[0][1]["mask"].shape == (1, 64, 64)
    assert masked[0][1]["set_area_to_bounds"] is True and masked[0][1]["mask_strength"] == 0.7
    (ranged,) = nodes.ConditioningSetTimestepRange().set_range(base, 0.2, 0.8)
    assert ranged[0][1]["start_percent"] == 0.2 and ranged[0][1]["end_percent"] == 0.8
    (zero,) = nodes.ConditioningZeroOut().zero_out(base)
    assert not zero[0][0].any() and not zero[0][1]["pooled_output"].any()
    assert base[0][0].all()


def test_clip_vision_encode_and_unclip_conditioning(models_folder) -> None:
    folder = models_folder / "clip_vision"
    folder.mkdir(parents=True)
    safetensors.torch.save_file(tiny_clip_vision_state_dict(), str(folder / "vision.safetensors"))
    (vision,) = nodes.CLIPVisionLoader().load_clip("vision.safetensors")
    image = torch.rand(2, 40, 60, 3)
    (output,) = nodes.CLIPVisionEncode().encode(vision, image, "center")
    assert output.image_embeds.shape == (2, 16)
    assert output["last_hidden_state"].shape == output.penultimate_hidden_states.shape == (2, 5, 32)
    (uncropped,) = nodes.CLIPVisionEncode().encode(vision, image, "none")
    assert not torch.equal(uncropped.image_embeds, output.image_embeds)
    base = cond()
    (first,) = nodes.unCLIPConditioning().apply_adm(base, output, 1.0, 0.1)
    (second,) = nodes.unCLIPConditioning().apply_adm(first, output, 0.5, 0.0)
    entries = second[0][1]["unclip_conditioning"]
    assert [(e["strength"], e["noise_augmentation"]) for e in entries] == [(1.0, 0.1), (0.5, 0.0)]
    assert entries[0]["clip_vision_output"] is output
    assert nodes.unCLIPConditioning().apply_adm(base, output, 0, 0.0)[0] is base


def test_clip_vision_from_the_open_clip_layout_matches_the_converted_one() -> None:
    converted = tiny_clip_vision_state_dict()
    state_dict = {"visual.class_embedding": converted["vision_model.embeddings.class_embedding"],
                  "visual.conv1.weight": converted["vision_model.embeddings.patch_embedding.weight"],
                  "visual.positional_embedding": converted["vision_model.embeddings.position_embedding.weight"],
                  "visual.ln_pre.weight": converted["vision_model.pre_layrnorm.weight"],
                  "visual.ln_pre.bias": converted["vision_model.pre_layrnorm.bias"],
                  "visual.ln_post.weight": converted["vision_model.post_layernorm.weight"],
                  "visual.ln_post.bias": converted["vision_model.post_layernorm.bias"],
                  "visual.proj": converted["visual_projection.weight"].T.contiguous()}
    renames = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
               "self_attn.out_proj": "attn.out_proj"}
    for n in range(3):
        layer = f"vision_model.encoder.layers.{n}."
        block = f"visual.transformer.resblocks.{n}."
        for ours, theirs in renames.items():
            for parameter in ("weight", "bias"):
                state_dict[f"{block}{theirs}.{parameter}"] = converted[f"{layer}{ours}.{parameter}"]
        for parameter in ("weight", "bias"):
            state_dict[f"{block}attn.in_proj_{parameter}"] = torch.cat(
                [converted[f"{layer}self_attn.{p}.{parameter}"] for p in ("q_proj", "k_proj", "v_proj")])
    open_clip = load_clip_vision_state_dict(state_dict)
    for key, value in load_clip_vision_state_dict(converted).get_sd().items():
        assert torch.equal(open_clip.get_sd()[key], value), key
    # OpenCLIP towers use exact GELU.
    assert open_clip.model.config.activation == "gelu"


OBJECT_INFO = {
    "CLIPTextEncode": {
        "input": {"required": {
            "text": ["STRING", {"multiline": True, "dynamicPrompts": True, "tooltip": "The text to be encoded."}],
            "clip": ["CLIP", {"tooltip": "The CLIP model used for encoding the text."}]}},
        "output": ["CONDITIONING"], "category": "conditioning", "display_name": "CLIP Text Encode (Prompt)",
        "python_module": "nodes"},
    "CLIPSetLastLayer": {
        "input": {"required": {"clip": ["CLIP"],
                               "stop_at_clip_layer": ["INT", {"default": -1, "min": -24, "max": -1, "step": 1}]}},
        "output": ["CLIP"], "category": "conditioning", "display_name": "CLIP Set Last Layer"},
    "ConditioningAverage": {
        "input": {"required": {"conditioning_to": ["CONDITIONING"], "conditioning_from": ["CONDITIONING"],
                               "conditioning_to_strength": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0,
                                                                      "step": 0.01}]}},
        "category": "conditioning", "display_name": "ConditioningAverage"},
    "ConditioningZeroOut": {"category": "advanced/conditioning"},
    "ConditioningSetTimestepRange": {"category": "advanced/conditioning"},
    "unCLIPConditioning": {"category": "conditioning", "display_name": "unCLIPConditioning"},
    "CLIPVisionLoader": {"category": "loaders", "output": ["CLIP_VISION"]},
    "CLIPVisionEncode": {"input": {"required": {"clip_vision": ["CLIP_VISION"], "image": ["IMAGE"],
                                                "crop": [["center", "none"]]}}},
    "CLIPTextEncodeSDXL": {
        "category": "advanced/conditioning", "python_module": "comfy_extras.nodes_clip_sdxl",
        "input_order": {"required": ["clip", "width", "height", "crop_w", "crop_h", "target_width",
                                     "target_height", "text_g", "text_l"]}},
    "CLIPTextEncodeSDXLRefiner": {
        "category": "advanced/conditioning",
        "input_order": {"required": ["ascore", "width", "height", "text", "clip"]}},
}


def as_json(value):
    """Tuples as lists, the way /object_info reaches the frontend."""
    if isinstance(value, (list, tuple)):
        return [as_json(v) for v in value]
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize("name", sorted(OBJECT_INFO))
def test_object_info_matches_comfyui(name, models_folder) -> None:
    registry = NodeRegistry()
    registry.register_mappings("core_nodes", nodes.NODE_CLASS_MAPPINGS, nodes.NODE_DISPLAY_NAME_MAPPINGS)
    info = as_json(node_info(name, registry.get(name), registry))
    for key, expected in OBJECT_INFO[name].items():
        assert info[key] == expected, key


def test_sdxl_encoder_inputs_as_comfyui_declares_them(models_folder) -> None:
    registry = NodeRegistry()
    registry.register_mappings("core_nodes", nodes.NODE_CLASS_MAPPINGS, nodes.NODE_DISPLAY_NAME_MAPPINGS)
    info = as_json(node_info("CLIPTextEncodeSDXL", nodes.CLIPTextEncodeSDXL, registry))
    required = info["input"]["required"]
    assert required["width"] == ["INT", {"default": 1024, "min": 0, "max": 16384}]
    assert required["text_g"] == ["STRING", {"multiline": True, "dynamicPrompts": True}]
    assert required["clip"] == ["CLIP", {}]
    refiner = as_json(node_info("CLIPTextEncodeSDXLRefiner", nodes.CLIPTextEncodeSDXLRefiner, registry))
    assert refiner["input"]["required"]["ascore"] == ["FLOAT", {"default": 6.0, "min": 0.0, "max": 1000.0,
                                                                "step": 0.01}]
