"""Configuration: search order, drop-ins, validation and annotations."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from kata.config import Config, apply_annotations, default_config_paths, load_config, resolve_config_path
from kata.config.loader import SYSTEM_CONFIG_PATHS
from kata.config.schema import AgentConfig, FactoryConfig, HypervisorConfig, RuntimeConfig
from kata.errors import ConfigError

SHIPPED = Path(__file__).resolve().parents[2] / "src/kata/config/configuration.toml"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    return write(tmp_path / "configuration.toml", "[hypervisor.qemu]\ndefault_memory = 300\n")


def test_shipped_file_equals_builtin_defaults() -> None:
    loaded = load_config(str(SHIPPED))
    assert loaded.config == Config()
    assert loaded.warnings == ()


def test_shipped_file_documents_every_key() -> None:
    data = tomllib.loads(SHIPPED.read_text())
    sections = {
        HypervisorConfig: data["hypervisor"]["qemu"],
        AgentConfig: data["agent"]["kata"],
        RuntimeConfig: data["runtime"],
        FactoryConfig: data["factory"],
    }
    for cls, table in sections.items():
        assert set(table) == {f.name for f in dataclasses.fields(cls)}, cls.__name__


def test_search_order_env_then_system_paths() -> None:
    assert default_config_paths({}) == list(SYSTEM_CONFIG_PATHS)
    env = {"KATA_CONF_FILE": "/x/c.toml"}
    assert default_config_paths(env) == [Path("/x/c.toml"), *SYSTEM_CONFIG_PATHS]


def test_explicit_path_beats_environment(conf: Path, tmp_path: Path) -> None:
    other = write(tmp_path / "other.toml", "")
    assert resolve_config_path(str(conf), {"KATA_CONF_FILE": str(other)}) == conf
    assert resolve_config_path(None, {"KATA_CONF_FILE": str(other)}) == other


@pytest.mark.parametrize("origin", ["--config", "KATA_CONF_FILE"])
def test_missing_named_file_is_an_error(origin: str, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=f"named by {origin} does not exist"):
        if origin == "--config":
            resolve_config_path(missing, {})
        else:
            resolve_config_path(None, {"KATA_CONF_FILE": missing})


def test_dropins_merge_in_lexical_order_later_wins(conf: Path) -> None:
    write(conf.parent / "config.d/50-mem.toml", "[hypervisor.qemu]\ndefault_memory = 512\n")
    write(conf.parent / "config.d/90-mem.toml", "[hypervisor.qemu]\ndefault_memory = 1024\n")
    write(conf.parent / "config.d/10-cpu.toml", "[hypervisor.qemu]\ndefault_vcpus = 2\n")
    write(conf.parent / "config.d/20-other.txt", "not toml at all [")
    loaded = load_config(str(conf), {})
    assert loaded.config.hypervisor.default_memory == 1024
    assert loaded.config.hypervisor.default_vcpus == 2  # tables merge deeply
    assert [p.name for p in loaded.fragments] == ["10-cpu.toml", "50-mem.toml", "90-mem.toml"]


def test_malformed_fragment_names_file_and_line(conf: Path) -> None:
    bad = write(conf.parent / "config.d/50-bad.toml", "[hypervisor.qemu]\ndefault_memory 512\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(conf), {})
    message = str(info.value)
    assert message.startswith(f"{bad}: invalid TOML")
    assert "line 2" in message
    assert "\n" not in message


def test_wrong_type_names_supplying_file_and_key(conf: Path) -> None:
    bad = write(conf.parent / "config.d/50-bad.toml", '[hypervisor.qemu]\ndefault_memory = "lots"\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(conf), {})
    assert str(info.value) == (f"{bad}: hypervisor.qemu.default_memory: expected an integer, got 'lots'")
    assert info.value.path == str(bad)
    assert info.value.key == "hypervisor.qemu.default_memory"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[hypervisor.qemu]\nmachine_type = "pc"\n', "'pc' is not one of: q35, microvm"),
        ("[hypervisor.qemu]\ndefault_memory = 16\n", "16 is below the minimum 64"),
        ("[hypervisor.qemu]\nenable_debug = 1\n", "expected a boolean, got 1"),
        ("[hypervisor.qemu]\nvirtio_fs_extra_args = [1]\n", "expected a list of strings"),
        ("[hypervisor.qemu]\ndefault_vcpus = true\n", "expected an integer, got True"),
        ('[runtime]\ninternetworking_model = "bridge"\n', "is not one of: tcfilter, macvtap, none"),
        ("[hypervisor.xen]\n", "hypervisor.xen: unsupported: choose one of qemu"),
        ("hypervisor = 3\n", "hypervisor: expected a table"),
        ("[agent.other]\n", "agent.other: unsupported: choose one of kata"),
    ],
)
def test_invalid_values_are_rejected(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path / "configuration.toml", text)
    with pytest.raises(ConfigError, match=problem.replace("[", r"\[")):
        load_config(str(path), {})


def test_unknown_keys_warn_and_are_ignored(tmp_path: Path) -> None:
    path = write(tmp_path / "configuration.toml", "[hypervisor.qemu]\nfoo = 1\n[bar]\nx = 1\n")
    loaded = load_config(str(path), {})
    assert loaded.config == Config()
    assert f"{path}: unknown key hypervisor.qemu.foo (ignored)" in loaded.warnings
    assert f"{path}: unknown key bar (ignored)" in loaded.warnings


def test_no_file_anywhere_gives_builtin_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("kata.config.loader.SYSTEM_CONFIG_PATHS", (tmp_path / "a.toml",))
    loaded = load_config(None, {})
    assert loaded.path is None
    assert loaded.config == Config()


def allowing(*patterns: str) -> Config:
    return dataclasses.replace(Config(), hypervisor=HypervisorConfig(enable_annotations=list(patterns)))


PREFIX = "io.katacontainers.config."


def test_annotation_applies_when_enabled() -> None:
    config = apply_annotations(allowing("default_.*", "agent.kernel_modules", "runtime.disable_new_netns"), {
        PREFIX + "hypervisor.default_memory": "2048",
        PREFIX + "agent.kernel_modules": '["e1000e", "dummy numdummies=2"]',
        PREFIX + "runtime.disable_new_netns": "true",
        "org.example.unrelated": "x",
    })
    assert config.hypervisor.default_memory == 2048
    assert config.agent.kernel_modules == ["e1000e", "dummy numdummies=2"]
    assert config.runtime.disable_new_netns is True


def test_annotation_not_enabled_is_refused() -> None:
    with pytest.raises(ConfigError, match="not enabled by hypervisor enable_annotations"):
        apply_annotations(allowing("default_vcpus"), {PREFIX + "hypervisor.default_memory": "512"})
    with pytest.raises(ConfigError, match="not enabled"):
        # the pattern must match the whole key name
        apply_annotations(allowing("default"), {PREFIX + "hypervisor.default_memory": "512"})


def test_annotation_values_are_validated() -> None:
    with pytest.raises(ConfigError, match="cannot parse 'many'"):
        apply_annotations(allowing(".*"), {PREFIX + "hypervisor.default_memory": "many"})
    with pytest.raises(ConfigError, match="below the minimum"):
        apply_annotations(allowing(".*"), {PREFIX + "hypervisor.default_memory": "1"})


def test_annotation_paths_must_match_valid_globs() -> None:
    with pytest.raises(ConfigError, match="does not match valid_hypervisor_paths"):
        apply_annotations(allowing("path"), {PREFIX + "hypervisor.path": "/tmp/evil-qemu"})
    ok = apply_annotations(allowing("path"), {PREFIX + "hypervisor.path": "/usr/bin/qemu-system-aarch64"})
    assert ok.hypervisor.path == "/usr/bin/qemu-system-aarch64"


def test_security_keys_cannot_be_annotated() -> None:
    config = allowing(".*")
    assert apply_annotations(config, {PREFIX + "hypervisor.enable_annotations": '[".*"]'}) == config
    assert apply_annotations(config, {PREFIX + "hypervisor.no_such_key": "1"}) == config
