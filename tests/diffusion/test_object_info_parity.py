"""Our /object_info entries against upstream ComfyUI's, node type by node type, field by field.

The reference (data/upstream_object_info.json) is what upstream ComfyUI served for the node types we
share with it, on an empty base directory; upstream/dump_object_info.py writes it. Our entries are built
the same way: the core_nodes and samplers plugins on an empty base directory.

Two spellings of one declaration count as equal, because the frontend reads them alike: classic and
schema (``io.ComfyNode``) nodes write the same input differently (``["MODEL"]`` / ``["MODEL", {}]``,
``[options]`` / ``["COMBO", {"options": options}]``, a hidden input as ``"PROMPT"`` / ``["PROMPT"]``,
no ``output_tooltips`` / all of them null, ``display_name`` null / the node's name), and we write the
keys later ComfyUI added to every entry (``search_aliases``, ``is_input_list`` ...). Everything else must
be equal, except what KNOWN_DIFFERENCES and LONGER_OPTIONS list with their reasons.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REFERENCE = json.loads((Path(__file__).parent / "data" / "upstream_object_info.json").read_text())

# Keys later ComfyUI writes in every entry, with the value that means "nothing set"; ...: any value
# (search aliases only help the node search box find a node).
LATER_KEYS: dict[str, Any] = {"is_input_list": False, "output_matchtypes": None, "deprecated": False,
                              "experimental": False, "dev_only": False, "api_node": False, "price_badge": None,
                              "essentials_category": None, "search_aliases": ...}

LATER = "as ComfyUI after 0.3.64 declares it"
# Where we knowingly differ from the reference, by node and field path, and why. Option lists that later ComfyUI
# extended are in LONGER_OPTIONS instead, where the reference's options must still all be there, in order.
KNOWN_DIFFERENCES: dict[tuple[str, str], str] = {
    ("AddNoise", ".experimental"): LATER,
    ("DualCLIPLoader", ".description"): LATER + ": its recipes name the newbie text encoders too",
    ("GrowMask", ".display_name"): LATER,
    ("MaskPreview", ".display_name"): LATER,
    ("ImageColorToMask", ".input.required.color[1].display"): LATER,
    ("ImageScaleToTotalPixels", ".input.optional"): LATER + " (resolution_steps), optional so older prompts run",
    ("ImageScaleToTotalPixels", ".input_order.optional"): LATER,
    ("VAELoader", ".input.required.vae_name[0]"): "no pixel_space choice: that pass-through VAE serves pixel-space "
                                                  "diffusion models, which we do not load",
}
LONGER_OPTIONS: dict[tuple[str, str], str] = {
    ("KSampler", "sampler_name"): LATER + ": the exp_heun_2_x0 samplers",
    ("KSamplerAdvanced", "sampler_name"): LATER + ": the exp_heun_2_x0 samplers",
    ("KSamplerSelect", "sampler_name"): LATER + ": the exp_heun_2_x0 samplers",
    ("CLIPLoader", "type"): LATER + ": flux2, ovis",
    ("DualCLIPLoader", "type"): LATER + ": hunyuan_video_15, kandinsky5, kandinsky5_image, ltxv, newbie",
}


@pytest.fixture(scope="module")
def our_object_info(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """What our /object_info serves for the core_nodes and samplers plugins' node types (no custom nodes)."""
    from comfy import paths, paths_plugin
    from comfy.nodes.object_info import object_info
    from comfy.nodes.registry import NodeRegistry
    from comfy.plugins import collect, create_plugin_manager, set_plugin_manager
    from comfyui_core_nodes import plugin as core_plugin
    from comfyui_samplers import plugin as samplers_plugin

    pm = create_plugin_manager(load_entrypoints=False)
    pm.register(paths_plugin, "local_models")
    pm.register(core_plugin, "core_nodes")
    pm.register(samplers_plugin, "samplers")
    set_plugin_manager(pm)
    paths.set_state(paths.FolderPaths.for_bases(str(tmp_path_factory.mktemp("empty_base"))))
    registry = NodeRegistry()
    collect(pm, "comfyui_register_nodes", registry.register)
    try:
        # Through JSON, as the frontend gets it: tuples become lists.
        yield json.loads(json.dumps(object_info(registry)))
    finally:
        set_plugin_manager(None)
        paths.set_state(None)


def canonical_input(spec: Any) -> Any:
    """An input declaration as ``[type or options, {options}]``, whichever way it was written."""
    if isinstance(spec, str):  # a hidden input, written bare by classic nodes
        spec = [spec]
    kind, options = spec[0], dict(spec[1]) if len(spec) > 1 else {}
    if kind == "COMBO" and "options" in options:
        kind = options.pop("options")
    if options.get("multiselect") is False:
        del options["multiselect"]
    return [kind, options]


def canonical_entry(entry: dict[str, Any]) -> dict[str, Any]:
    entry = dict(entry)
    entry["input"] = {section: {name: canonical_input(spec) for name, spec in specs.items()}
                      for section, specs in entry["input"].items()}
    if entry.get("display_name") is None:
        entry["display_name"] = entry["name"]
    if "output_tooltips" in entry and not any(entry["output_tooltips"]):
        del entry["output_tooltips"]
    return entry


def differences(ours: dict[str, Any], theirs: dict[str, Any], path: str = "") -> list[str]:
    """Where ``ours`` and ``theirs`` differ, one line per differing leaf, by its path."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        found = [f"{path}.{key}: missing, upstream has {json.dumps(theirs[key])}" for key in theirs if key not in ours]
        found += [f"{path}.{key}: upstream has none, ours is {json.dumps(ours[key])}" for key in ours
                  if key not in theirs]
        for key, upstream in theirs.items():
            if key in ours:
                found += differences(ours[key], upstream, f"{path}.{key}")
        # The order of a section's inputs is the order of the node's widgets; an options dict's order means nothing.
        if not found and path.count(".") == 2 and path.startswith(".input.") and list(ours) != list(theirs):
            found.append(f"{path}: order {list(ours)}, upstream {list(theirs)}")
        return found
    if isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs):
        return [line for index, (mine, upstream) in enumerate(zip(ours, theirs))
                for line in differences(mine, upstream, f"{path}[{index}]")]
    if ours != theirs or type(ours) is not type(theirs):
        return [f"{path}: {json.dumps(ours)}, upstream {json.dumps(theirs)}"]
    return []


def entry_differences(name: str, ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    ours = canonical_entry(ours)
    for key, nothing in LATER_KEYS.items():
        if key in ours and key not in theirs and (nothing is ... or ours[key] == nothing):
            del ours[key]
    return [line for line in differences(ours, canonical_entry(theirs)) if not known(name, line)]


def known(name: str, line: str) -> bool:
    """Whether a difference line is one KNOWN_DIFFERENCES or LONGER_OPTIONS accounts for."""
    return (any(about(field, line) for node, field in KNOWN_DIFFERENCES if node == name)
            or any(about(f".input.required.{field}[0]", line) for node, field in LONGER_OPTIONS if node == name))


def about(field: str, line: str) -> bool:
    """Whether a difference line is about ``field`` or something inside it."""
    return line.startswith(field) and line[len(field)] in ":.["


def test_reference_covers_our_node_types(our_object_info) -> None:
    shared = set(REFERENCE["nodes"]) | set(REFERENCE["not_described_upstream"])
    assert shared <= set(our_object_info), "node types ComfyUI has that we no longer register"
    assert len(REFERENCE["nodes"]) > 100


@pytest.mark.parametrize("name", sorted(REFERENCE["nodes"]))
def test_entry_matches_comfyui(name: str, our_object_info) -> None:
    found = entry_differences(name, our_object_info[name], REFERENCE["nodes"][name])
    assert not found, f"{name} differs from ComfyUI {REFERENCE['comfyui_version']}:\n" + "\n".join(found)


@pytest.mark.parametrize("node, field", sorted(LONGER_OPTIONS))
def test_longer_option_lists_keep_comfyuis_options_in_order(node: str, field: str, our_object_info) -> None:
    ours = canonical_input(our_object_info[node]["input"]["required"][field])[0]
    theirs = canonical_input(REFERENCE["nodes"][node]["input"]["required"][field])[0]
    assert [option for option in ours if option in theirs] == theirs
    assert len(ours) > len(theirs), "now as long as ComfyUI's: drop it from LONGER_OPTIONS"


@pytest.mark.parametrize("node, field", sorted(KNOWN_DIFFERENCES))
def test_known_differences_are_still_there(node: str, field: str, our_object_info) -> None:
    """Each listed difference still shows, so the list shrinks when we catch up."""
    lines = differences(canonical_entry(our_object_info[node]), canonical_entry(REFERENCE["nodes"][node]))
    assert any(about(field, line) for line in lines), f"{node} {field} now matches ComfyUI: drop it from the list"
