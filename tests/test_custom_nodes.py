"""Third-party nodes: ``custom_nodes/`` folders, installed distributions, and the legacy module names."""
from __future__ import annotations

import importlib
import logging
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from comfy import paths, paths_plugin
from comfy.hookspecs import hookimpl
from comfy.legacy import install_legacy_modules, uninstall_legacy_modules
from comfy.nodes.custom_nodes import load_custom_nodes
from comfy.nodes.object_info import object_info
from comfy.nodes import registry as node_registry
from comfy.nodes.registry import NodeRegistry, build_node_registry
from comfy.plugins import PluginConflictError, create_plugin_manager, set_plugin_manager

CLASSIC_NODE = '''
class {cls}:
    @classmethod
    def INPUT_TYPES(cls):
        return {{"required": {{"value": ("INT", {{"default": 1}})}}}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "tests"
    def run(self, value):
        return (value + {add},)
'''

SCHEMA_EXTENSION = '''
from comfy_api.latest import ComfyExtension, io

LOADED = []

class {cls}(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="{node_id}", display_name="{cls} label", inputs=[io.Int.Input("value")],
                         outputs=[io.Int.Output()])
    @classmethod
    def execute(cls, value):
        return io.NodeOutput(value * 2)

class Extension(ComfyExtension):
    async def on_load(self):
        LOADED.append(True)
    async def get_node_list(self):
        return [{cls}]

async def comfy_entrypoint():
    return Extension()
'''


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def classic_module(cls: str, name: str | None = None, add: int = 0) -> str:
    return CLASSIC_NODE.format(cls=cls, add=add) + f'\nNODE_CLASS_MAPPINGS = {{"{name or cls}": {cls}}}\n'


def make_distribution(site: Path, dist_name: str, package: str, files: dict[str, str]) -> None:
    """An installed distribution as pip leaves it: the package plus its ``.dist-info``."""
    for relative, text in files.items():
        write(site / package / relative, text)
    info = site / f"{dist_name.replace('-', '_')}-0.1.dist-info"
    write(info / "METADATA", f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 0.1\n")
    write(info / "entry_points.txt", f"[comfyui.custom_nodes]\n{package} = {package}\n")


class LegacyPaths:
    """A tiny plugin providing ``folder_paths`` for vanilla nodes, the way the paths plugin does."""

    def __init__(self, module: str):
        self.module = module

    @hookimpl
    def comfyui_register_legacy_modules(self, register):
        register("folder_paths", self.module)


@pytest.fixture(autouse=True)
def isolated_imports(monkeypatch):
    """Whatever a test imports, appends to sys.path or installs as a finder is gone afterwards."""
    before = set(sys.modules)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    yield
    uninstall_legacy_modules()
    for name in set(sys.modules) - before:
        del sys.modules[name]
    importlib.invalidate_caches()


@pytest.fixture
def site(tmp_path, monkeypatch) -> Path:
    """A site-packages folder on sys.path for real installed modules and distributions."""
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    return path


@pytest.fixture
def pm(site):
    """A plugin manager whose only plugin provides ``folder_paths`` (module ``paths_for_tests``)."""
    write(site / "paths_for_tests.py", """
        def get_folder_paths(folder_name):
            return ["/models/" + folder_name]
    """)
    manager = create_plugin_manager(load_entrypoints=False)
    manager.register(LegacyPaths("paths_for_tests"), name="test_paths")
    return manager


@pytest.fixture
def custom_nodes(tmp_path) -> Path:
    """A custom_nodes folder with a module, packages good and bad, and things to skip."""
    folder = tmp_path / "custom_nodes"
    write(folder / "single_node.py", classic_module("SingleNode"))
    write(folder / "good_pack" / "__init__.py", """
        from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
        WEB_DIRECTORY = "./web"
    """)
    write(folder / "good_pack" / "nodes.py", classic_module("PackNode") +
          'NODE_DISPLAY_NAME_MAPPINGS = {"PackNode": "Pack Node"}\n')
    write(folder / "good_pack" / "web" / "extension.js", "console.log('hello')\n")
    write(folder / "broken_pack" / "__init__.py", "raise ImportError('needs a library that is missing')\n")
    write(folder / "exiting_pack" / "__init__.py", "import sys\nsys.exit('no GPU here')\n")
    write(folder / "vanilla_pack" / "__init__.py", """
        import folder_paths
        from comfy_api.latest import ComfyExtension, io

        CHECKPOINTS = folder_paths.get_folder_paths("checkpoints")

        class ListCheckpoints(io.ComfyNode):
            @classmethod
            def define_schema(cls):
                return io.Schema(node_id="ListCheckpoints", display_name="List Checkpoints",
                                 inputs=[io.Combo.Input("folder", options=CHECKPOINTS)],
                                 outputs=[io.String.Output()])

            @classmethod
            def execute(cls, folder):
                return io.NodeOutput(folder)

        class Extension(ComfyExtension):
            async def get_node_list(self):
                return [ListCheckpoints]

        async def comfy_entrypoint():
            return Extension()
    """)
    write(folder / "disabled_pack.disabled" / "__init__.py", classic_module("DisabledNode"))
    write(folder / "example_node.py.example", classic_module("ExampleNode"))
    write(folder / ".hidden_pack" / "__init__.py", classic_module("HiddenNode"))
    write(folder / "notes.txt", "not python\n")
    write(folder / "not_a_package" / "helper.py", classic_module("HelperNode"))
    return folder


def load(folders: list[Path], pm, **options) -> NodeRegistry:
    registry = NodeRegistry()
    configuration = SimpleNamespace(**options) if options else None
    load_custom_nodes(registry, configuration, folders=[str(folder) for folder in folders], pm=pm)
    return registry


def test_custom_node_folder_loads_what_it_can(custom_nodes, pm, caplog):
    with caplog.at_level(logging.ERROR):
        registry = load([custom_nodes], pm)

    assert set(registry.classes) == {"SingleNode", "PackNode", "ListCheckpoints"}
    assert registry.display_names["PackNode"] == "Pack Node"
    assert registry.modules["PackNode"] == "custom_nodes.good_pack"
    assert registry.modules["SingleNode"] == "custom_nodes.single_node"
    assert registry.sources["PackNode"] == f"custom node {custom_nodes / 'good_pack'}"
    assert registry.web_directories == {"good_pack": str(custom_nodes / "good_pack" / "web")}

    failures = {error.name: error for error in registry.load_errors}
    assert set(failures) == {"broken_pack", "exiting_pack"}
    assert failures["broken_pack"].path == str(custom_nodes / "broken_pack")
    assert failures["broken_pack"].error == "ImportError: needs a library that is missing"
    assert failures["exiting_pack"].error == "SystemExit: no GPU here"
    assert "broken_pack" in caplog.text and "Traceback" in caplog.text

    # The node classes work as the executor will call them.
    single = registry.classes["SingleNode"]
    assert getattr(single(), single.FUNCTION)(value=4) == (4,)
    assert str(custom_nodes) in sys.path


def test_vanilla_imports_reach_plugin_modules(custom_nodes, pm):
    registry = load([custom_nodes], pm)

    import folder_paths
    import paths_for_tests
    assert folder_paths is paths_for_tests
    assert folder_paths.__spec__.name == "paths_for_tests"
    assert registry.display_names["ListCheckpoints"] == "List Checkpoints"
    info = object_info(registry)["ListCheckpoints"]
    assert info["input"]["required"]["folder"] == ("COMBO", {"multiselect": False,
                                                            "options": ["/models/checkpoints"]})
    assert info["python_module"] == "custom_nodes.vanilla_pack"


def test_a_legacy_name_nobody_provides_names_its_plugin(tmp_path, pm):
    folder = tmp_path / "custom_nodes"
    write(folder / "sampling_pack.py", "import comfy.samplers\nNODE_CLASS_MAPPINGS = {}\n")
    write(folder / "server_pack.py", "from server import PromptServer\nNODE_CLASS_MAPPINGS = {}\n")

    registry = load([folder], pm)

    errors = {error.name: error.error for error in registry.load_errors}
    assert errors["sampling_pack.py"].startswith("ModuleNotFoundError: No module named 'comfy.samplers'")
    assert "comfyui-samplers" in errors["sampling_pack.py"]
    assert "comfyui-server" in errors["server_pack.py"]


def test_legacy_names_are_aliases_with_stand_in_parents(site):
    write(site / "real_mask_nodes.py", "VALUE = 42\n")

    class Extras:
        @hookimpl
        def comfyui_register_legacy_modules(self, register):
            register("comfy_extras.nodes_mask", "real_mask_nodes")

    manager = create_plugin_manager(load_entrypoints=False)
    manager.register(Extras(), name="extras")
    install_legacy_modules(manager)

    from comfy_extras import nodes_mask
    import comfy_extras.nodes_mask as same
    import real_mask_nodes
    assert nodes_mask is same is real_mask_nodes and nodes_mask.VALUE == 42
    assert sys.modules["comfy_extras"].__path__ == []

    # Reinstalling replaces the table rather than adding a second finder.
    finder = install_legacy_modules(create_plugin_manager(load_entrypoints=False))
    assert finder.table == {} and sum(f is finder for f in sys.meta_path) == 1


def test_two_plugins_registering_one_legacy_name_is_an_error_naming_both(site):
    write(site / "other_paths.py", "")
    manager = create_plugin_manager(load_entrypoints=False)
    manager.register(LegacyPaths("other_paths"), name="first_paths")
    manager.register(LegacyPaths("other_paths"), name="second_paths")
    with pytest.raises(PluginConflictError, match="'first_paths'.*'second_paths'"):
        install_legacy_modules(manager)


@pytest.mark.parametrize("options, expected", [
    ({"disable_all_custom_nodes": True}, set()),
    ({"disable_all_custom_nodes": True, "whitelist_custom_nodes": ["good_pack", "single_node.py"]},
     {"PackNode", "SingleNode"}),
    ({"blacklist_custom_nodes": ["*_pack"]}, {"SingleNode"}),
    ({"disable_all_custom_nodes": True, "whitelist_custom_nodes": ["good_pack"],
      "blacklist_custom_nodes": ["good*"]}, set()),
])
def test_disable_whitelist_and_blacklist(custom_nodes, pm, options, expected):
    registry = load([custom_nodes], pm, **options)
    assert set(registry.classes) == expected


def test_installed_distribution_nodes_are_found_in_submodules(site, pm):
    make_distribution(site, "ep-nodes", "ep_nodes", {
        "__init__.py": "",
        "graph/__init__.py": "",
        "graph/nodes.py": classic_module("DeepNode") + 'WEB_DIRECTORY = "js"\n',
        "graph/js/widget.js": "",
        "extensions/__init__.py": SCHEMA_EXTENSION.format(cls="SchemaNode", node_id="EpSchemaNode"),
        "broken.py": "raise RuntimeError('broken submodule')\n",
    })
    importlib.invalidate_caches()

    registry = load([], pm)

    assert set(registry.classes) == {"DeepNode", "EpSchemaNode"}
    assert registry.sources["DeepNode"] == "custom node package ep-nodes 0.1"
    assert registry.modules["EpSchemaNode"] == "custom_nodes.ep_nodes"
    assert registry.display_names["EpSchemaNode"] == "SchemaNode label"
    assert registry.web_directories == {"ep_nodes.graph.nodes": str(site / "ep_nodes" / "graph" / "js")}
    assert [error.name for error in registry.load_errors] == ["ep_nodes.broken"]
    assert sys.modules["ep_nodes.extensions"].LOADED == [True]
    node = registry.classes["EpSchemaNode"]
    assert getattr(node(), node.FUNCTION)(value=21) == {"result": (42,)}


async def test_comfy_entrypoint_runs_while_an_event_loop_is_running(site, pm):
    make_distribution(site, "ep-async", "ep_async", {
        "__init__.py": SCHEMA_EXTENSION.format(cls="AsyncNode", node_id="EpAsyncNode"),
    })
    importlib.invalidate_caches()

    registry = load([], pm)

    assert list(registry.classes) == ["EpAsyncNode"]


def test_installed_packages_obey_disable_and_blacklist(site, pm):
    make_distribution(site, "ep-skip", "ep_skip", {"__init__.py": classic_module("SkipNode")})
    importlib.invalidate_caches()

    assert load([], pm, disable_all_custom_nodes=True).classes == {}
    assert load([], pm, blacklist_custom_nodes=["ep-*"]).classes == {}
    assert "SkipNode" in load([], pm, disable_all_custom_nodes=True, whitelist_custom_nodes=["ep_skip"]).classes


def test_a_node_name_from_two_sources_is_an_error_naming_both(site, custom_nodes, pm, caplog):
    make_distribution(site, "ep-clash", "ep_clash", {"__init__.py": classic_module("Clash", name="PackNode", add=1)})
    importlib.invalidate_caches()

    with caplog.at_level(logging.ERROR):
        registry = load([custom_nodes], pm)

    # The installed package came first and keeps the name; the folder package's other nodes still load.
    assert registry.sources["PackNode"] == "custom node package ep-clash 0.1"
    clash = [error for error in registry.load_errors if error.name == "good_pack"]
    assert len(clash) == 1
    message = clash[0].error
    assert "'PackNode'" in message and "custom node package ep-clash 0.1" in message
    assert str(custom_nodes / "good_pack") in message
    assert message in caplog.text


def test_start_up_loads_the_base_directory_custom_nodes_with_the_kernels_folder_paths(tmp_path):
    write(tmp_path / "custom_nodes" / "uses_paths.py", """
        import folder_paths

        class Checkpoints:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"ckpt_name": (folder_paths.get_filename_list("checkpoints"),)}}
            RETURN_TYPES = ()
            FUNCTION = "run"

        NODE_CLASS_MAPPINGS = {"Checkpoints": Checkpoints}
    """)
    write(tmp_path / "models" / "checkpoints" / "tiny.safetensors", "")
    manager = create_plugin_manager(load_entrypoints=False)
    manager.register(paths_plugin, name="local_models")
    set_plugin_manager(manager)
    paths.configure_paths({"base_directory": str(tmp_path)})
    try:
        registry = build_node_registry(manager, SimpleNamespace(disable_all_custom_nodes=False))
        info = object_info(registry)
    finally:
        paths.set_state(None)
        node_registry.set_current(None)
        set_plugin_manager(None)

    import folder_paths
    assert folder_paths is paths
    assert registry.load_errors == []
    assert info["Checkpoints"]["input"]["required"]["ckpt_name"] == (["tiny.safetensors"],)
    assert info["Checkpoints"]["python_module"] == "custom_nodes.uses_paths"
