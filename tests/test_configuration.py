"""Configuration: command line > COMFYUI_* environment > config file > default, plugins' options, extenders."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from comfy.cli_args_types import Configuration
from comfy.configuration import default_configuration, disabled_plugins, make_parser, parse_configuration
from comfy.hookspecs import hookimpl
from comfy.plugins import create_plugin_manager

# Parses its argv with a plugin manager that loads no entry points, and prints the result as JSON.
PARSE = textwrap.dedent("""
    import json, sys
    from comfy.configuration import disabled_plugins, parse_configuration
    from comfy.plugins import create_plugin_manager
    pm = create_plugin_manager(disabled_plugins(sys.argv[1:]), load_entrypoints=False)
    print(json.dumps(parse_configuration(sys.argv[1:], pm)))
""")


def clean_environment(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("COMFYUI_")}
    env.update(extra)
    return env


def run_python(code: str, *argv: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *argv], cwd=cwd, env=env or clean_environment(),
                          capture_output=True, text=True, timeout=120)


def parse_in_subprocess(*argv: str, cwd: Path, **env: str) -> dict:
    result = run_python(PARSE, *argv, cwd=cwd, env=clean_environment(**env))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def bare_pm():
    return create_plugin_manager(load_entrypoints=False)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """In-process parsing from an empty directory with no COMFYUI_* variables."""
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith("COMFYUI_"):
            monkeypatch.delenv(key)
    return tmp_path


class LevelPlugin:
    @hookimpl
    def comfyui_add_options(self, parser):
        parser.add_argument("--my-feature-level", type=int, default=1, help="How much feature.")


def test_defaults(isolated, bare_pm):
    config = parse_configuration([], bare_pm)
    assert isinstance(config, Configuration)
    assert config.cache_lru == 0 and not config.cache_none and not config.cache_classic
    assert config.logging_level == "INFO"
    assert config.cwd is None and config.base_directory is None
    assert config.base_paths == [] and config.extra_model_paths_config == [] and config.workflows == []
    assert config.disable_plugins == [] and config.list_plugins is False
    assert config.config_files == []


def test_command_line_values(isolated, bare_pm):
    config = parse_configuration(
        ["--cwd", "/srv/comfy", "--base-paths", "/a", "/b,/c", "--base-paths", "/d", "--cache-lru", "5",
         "--logging-level", "debug", "--workflows", "-", "w.json", "--whitelist-custom-nodes", "x",
         "--disable-all-custom-nodes", "--user-directory", "/u"], bare_pm)
    assert config.cwd == "/srv/comfy"
    assert config.base_paths == ["/a", "/b", "/c", "/d"]
    assert config["cache_lru"] == 5
    assert config.logging_level == "DEBUG"
    assert config.workflows == ["-", "w.json"]
    assert config.whitelist_custom_nodes == ["x"] and config.disable_all_custom_nodes
    assert config.user_directory == "/u"


def test_cache_options_are_mutually_exclusive(isolated, bare_pm, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_configuration(["--cache-lru", "2", "--cache-none"], bare_pm)
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_precedence_command_line_over_environment_over_config_file_over_default(tmp_path):
    (tmp_path / "config.yaml").write_text("cache-lru: 1\nlogging-level: WARNING\n")
    assert parse_in_subprocess(cwd=tmp_path)["cache_lru"] == 1
    from_env = parse_in_subprocess(cwd=tmp_path, COMFYUI_CACHE_LRU="2")
    assert from_env["cache_lru"] == 2
    assert from_env["logging_level"] == "WARNING"  # the config file still supplies the rest
    from_cli = parse_in_subprocess("--cache-lru", "3", cwd=tmp_path, COMFYUI_CACHE_LRU="2")
    assert from_cli["cache_lru"] == 3
    (tmp_path / "config.yaml").unlink()
    assert parse_in_subprocess(cwd=tmp_path)["cache_lru"] == 0


def test_command_line_option_overrides_a_mutually_exclusive_config_value(tmp_path):
    (tmp_path / "config.yaml").write_text("cache-lru: 4\n")
    config = parse_in_subprocess("--cache-none", cwd=tmp_path)
    assert config["cache_none"] is True and config["cache_lru"] == 0


def test_environment_flags_and_lists(tmp_path):
    config = parse_in_subprocess(cwd=tmp_path, COMFYUI_BASE_PATHS="/a,/b", COMFYUI_CACHE_NONE="true",
                                 COMFYUI_DISABLE_ALL_CUSTOM_NODES="false")
    assert config["base_paths"] == ["/a", "/b"]
    assert config["cache_none"] is True
    assert config["disable_all_custom_nodes"] is False


CONFIG_FILES = {
    "config.yaml": "cache-lru: 9\nbase-paths:\n  - /x\n  - /y\ndisable-all-custom-nodes: true\nlogging-level: error\n",
    "config.json": json.dumps({"cache-lru": 9, "base-paths": ["/x", "/y"], "disable-all-custom-nodes": True,
                               "logging-level": "error"}),
    "config.ini": "[comfyui]\ncache-lru = 9\nbase-paths = [/x, /y]\ndisable-all-custom-nodes = true\n"
                  "logging-level = error\n",
    "config.cfg": "cache-lru = 9\nbase-paths = [\"/x\", \"/y\"]\ndisable-all-custom-nodes = true\n"
                  "logging-level = error\n",
}


@pytest.mark.parametrize("name", sorted(CONFIG_FILES))
def test_default_config_files_in_each_format(tmp_path, name):
    (tmp_path / name).write_text(CONFIG_FILES[name])
    config = parse_in_subprocess(cwd=tmp_path)
    assert config["cache_lru"] == 9
    assert config["base_paths"] == ["/x", "/y"]
    assert config["disable_all_custom_nodes"] is True
    assert config["logging_level"] == "ERROR"
    assert config["config_files"] == [name]


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json", ".ini"])
def test_config_file_named_with_dash_c(isolated, bare_pm, suffix):
    source = CONFIG_FILES["config.yaml" if suffix == ".yml" else f"config{suffix}"]
    settings = isolated / "elsewhere" / f"settings{suffix}"
    settings.parent.mkdir()
    settings.write_text(source)
    for flag in ("-c", "--config"):
        config = parse_configuration([flag, str(settings)], bare_pm)
        assert config.cache_lru == 9 and config.base_paths == ["/x", "/y"]
        assert config.config_files == [str(settings)]


def test_config_file_accepts_dest_spelling(isolated, bare_pm):
    (isolated / "config.yaml").write_text("cache_lru: 3\nextra_model_paths_config: [a.yaml]\n")
    config = parse_configuration([], bare_pm)
    assert config.cache_lru == 3 and config.extra_model_paths_config == ["a.yaml"]


def test_unknown_config_key_names_the_key_and_the_file(tmp_path):
    settings = tmp_path / "settings.yaml"
    settings.write_text("cache-lru: 2\nno-such-option: 1\n")
    result = run_python(PARSE, "-c", str(settings), cwd=tmp_path)
    assert result.returncode == 2
    assert "no-such-option" in result.stderr and str(settings) in result.stderr


def test_unknown_key_in_default_config_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"listen": "0.0.0.0"}))
    result = run_python(PARSE, cwd=tmp_path)
    assert result.returncode == 2
    assert "'listen'" in result.stderr and "config.json" in result.stderr


def test_unknown_command_line_option_is_an_error(tmp_path):
    result = run_python(PARSE, "--no-such-option", cwd=tmp_path)
    assert result.returncode == 2 and "--no-such-option" in result.stderr


@pytest.mark.parametrize("name", ["out.yaml", "out.json", "out.ini"])
def test_write_out_config_file_round_trip(tmp_path, name):
    written = run_python(PARSE, "--cache-lru", "7", "--base-paths", "/a", "/b", "--disable-all-custom-nodes",
                         "--logging-level", "DEBUG", "--write-out-config-file", name, cwd=tmp_path,
                         env=clean_environment(COMFYUI_OUTPUT_DIRECTORY="/out"))
    assert written.returncode == 0, written.stderr
    assert (tmp_path / name).is_file()
    config = parse_in_subprocess("-c", name, cwd=tmp_path)
    assert config["cache_lru"] == 7
    assert config["base_paths"] == ["/a", "/b"]
    assert config["disable_all_custom_nodes"] is True
    assert config["logging_level"] == "DEBUG"
    assert config["output_directory"] == "/out"
    if name.endswith(".json"):
        assert json.loads((tmp_path / name).read_text())["cache-lru"] == 7


def test_plugin_options(isolated, bare_pm, monkeypatch):
    bare_pm.register(LevelPlugin(), name="levels")
    assert parse_configuration([], bare_pm).my_feature_level == 1
    assert parse_configuration(["--my-feature-level", "3"], bare_pm).my_feature_level == 3
    monkeypatch.setenv("COMFYUI_MY_FEATURE_LEVEL", "4")
    assert parse_configuration([], bare_pm).my_feature_level == 4
    assert parse_configuration(["--my-feature-level", "5"], bare_pm).my_feature_level == 5
    assert "--my-feature-level" in make_parser(bare_pm).format_help()


def test_absent_plugin_options_are_absent(isolated, bare_pm, capsys):
    config = parse_configuration([], bare_pm)
    assert "my_feature_level" not in config
    with pytest.raises(AttributeError, match="my_feature_level"):
        config.my_feature_level
    with pytest.raises(SystemExit):
        parse_configuration(["--my-feature-level", "3"], bare_pm)
    assert "--my-feature-level" in capsys.readouterr().err


def test_disabled_plugins_from_each_source(tmp_path):
    code = "import sys, json; from comfy.configuration import disabled_plugins; " \
           "print(json.dumps(disabled_plugins(sys.argv[1:])))"
    (tmp_path / "config.yaml").write_text("disable-plugins: [from_file]\ncache-lru: 3\nplugin-owned: 1\n")
    for argv, env, expected in [
        ((), {}, ["from_file"]),
        ((), {"COMFYUI_DISABLE_PLUGINS": "a,b"}, ["a", "b"]),
        (("--port", "1", "--disable-plugins", "x", "y", "--listen"), {"COMFYUI_DISABLE_PLUGINS": "a"}, ["x", "y"]),
    ]:
        result = run_python(code, *argv, cwd=tmp_path, env=clean_environment(**env))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == expected


def test_disabled_plugin_contributes_no_options(isolated, monkeypatch):
    monkeypatch.setenv("COMFYUI_DISABLE_PLUGINS", "levels")
    pm = create_plugin_manager(disabled_plugins([]), load_entrypoints=False)
    assert pm.register(LevelPlugin(), name="levels") is None
    assert "my_feature_level" not in parse_configuration([], pm)


def make_distribution(site: Path, name: str, entry_points: str, modules: dict[str, str]) -> None:
    """A minimal installed distribution: a dist-info folder with its entry points, and its modules."""
    dist_info = site / f"{name}-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(entry_points)
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))


def test_custom_config_entry_points(tmp_path):
    site = tmp_path / "site"
    make_distribution(site, "comfyui_myext", "[comfyui.custom_config]\nmyext = myext_config:extend\n"
                                             "replacing = myext_config:replace\n", {
        "myext_config": """
            def extend(parser):
                parser.add_argument("--my-extension-flag", action="store_true")

            def replace(parser):
                parser.add_argument("--my-other-option", default="dflt")
                return parser
        """,
    })
    env = clean_environment(PYTHONPATH=str(site))
    result = run_python(PARSE, "--my-extension-flag", "--my-other-option", "set", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config["my_extension_flag"] is True and config["my_other_option"] == "set"

    env["COMFYUI_MY_EXTENSION_FLAG"] = "true"
    config = json.loads(run_python(PARSE, cwd=tmp_path, env=env).stdout)
    assert config["my_extension_flag"] is True and config["my_other_option"] == "dflt"

    # An extender is blocked by name like any plugin.
    result = run_python(PARSE, "--disable-plugins", "myext", cwd=tmp_path, env=env)
    config = json.loads(result.stdout)
    assert "my_extension_flag" not in config and config["my_other_option"] == "dflt"


def test_failing_custom_config_names_its_entry_point(tmp_path):
    site = tmp_path / "site"
    make_distribution(site, "comfyui_broken", "[comfyui.custom_config]\nbroken = broken_config:extend\n", {
        "broken_config": """
            def extend(parser):
                parser.add_argument("--cache-lru")  # already the kernel's
        """,
    })
    result = run_python(PARSE, cwd=tmp_path, env=clean_environment(PYTHONPATH=str(site)))
    assert result.returncode != 0
    assert "ConfigurationError" in result.stderr and "'broken'" in result.stderr
    assert "comfyui_broken 0.1" in result.stderr


def test_default_configuration_ignores_argv_but_reads_environment(tmp_path):
    code = "from comfy.cli_args import args; print(args.cache_lru, args.logging_level)"
    (tmp_path / "config.ini").write_text("logging-level = warning\n")
    result = run_python(code, "--cache-lru", "5", "--foreign-option", cwd=tmp_path,
                        env=clean_environment(COMFYUI_CACHE_LRU="4"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["4", "WARNING"]


def test_set_configuration_replaces_args(tmp_path):
    code = textwrap.dedent("""
        from comfy import cli_args
        from comfy.cli_args_types import Configuration
        cli_args.set_configuration(Configuration(cache_lru=11))
        from comfy.cli_args import args
        print(args.cache_lru)
        cli_args.set_configuration(None)
        print(cli_args.args.cache_lru)
    """)
    result = run_python(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["11", "0"]


def test_importing_cli_args_parses_nothing(tmp_path):
    code = "import sys, comfy.cli_args; print(sorted({'configargparse', 'comfy.configuration', 'yaml'} & set(sys.modules)))"
    result = run_python(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_default_configuration_in_process(isolated, bare_pm, monkeypatch):
    monkeypatch.setenv("COMFYUI_BASE_DIRECTORY", "/base")
    monkeypatch.setattr(sys, "argv", ["pytest", "--cache-lru", "3"])
    config = default_configuration(bare_pm)
    assert config.base_directory == "/base" and config.cache_lru == 0


def test_configuration_type():
    config = Configuration(cache_lru=2)
    assert config.cache_lru == config["cache_lru"] == 2
    config.logging_level = "DEBUG"
    assert config["logging_level"] == "DEBUG"
    with pytest.raises(AttributeError, match="no option 'missing'"):
        config.missing
    assert getattr(config, "missing", "fallback") == "fallback"
    del config.logging_level
    assert "logging_level" not in config
    copied = config.copy()
    assert isinstance(copied, Configuration) and copied == config and copied is not config
    restored = pickle.loads(pickle.dumps(config))
    assert isinstance(restored, Configuration) and restored.cache_lru == 2
    assert "cache_lru" in dir(config)
