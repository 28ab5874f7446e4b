"""kata-runtime as a user runs it: real console scripts, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def run(*args: str, env: dict[str, str] | None = None, tool: str = "kata-runtime",
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / tool), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    (tmp_path / "config.d").mkdir()
    (tmp_path / "configuration.toml").write_text("[hypervisor.qemu]\ndefault_vcpus = 1\n")
    (tmp_path / "config.d/50-mem.toml").write_text("[hypervisor.qemu]\ndefault_memory = 512\n")
    return tmp_path


def test_show_default_config_paths_in_search_order(conf_dir: Path) -> None:
    conf = str(conf_dir / "configuration.toml")
    proc = run("--show-default-config-paths", env={"KATA_CONF_FILE": conf})
    assert proc.returncode == 0
    assert proc.stdout.splitlines() == [conf, "/etc/kata-containers/configuration.toml",
                                        "/usr/share/defaults/kata-containers/configuration.toml"]
    explicit = run("--config", "/x.toml", "--show-default-config-paths", env={"KATA_CONF_FILE": conf})
    assert explicit.stdout.splitlines()[:2] == ["/x.toml", conf]


def test_env_json_shows_the_dropin_override(conf_dir: Path) -> None:
    proc = run("env", "--json", env={"KATA_CONF_FILE": str(conf_dir / "configuration.toml")})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["config"]["hypervisor"]["qemu"]["default_memory"] == 512
    assert report["runtime"]["config"]["fragments"] == [str(conf_dir / "config.d/50-mem.toml")]
    assert report["hypervisor"]["name"] == "qemu"
    assert {"kernel", "initrd", "host"} <= report.keys()
    ksm = report["ksm"]  # this host has /sys/kernel/mm/ksm; the configuration does not drive it by default
    assert ksm["enable_ksm"] is False
    if ksm["available"]:
        assert ksm["saved_mib"] >= 0 and ksm["run"] in (0, 1, 2)


def test_env_text_is_toml(conf_dir: Path) -> None:
    proc = run("--config", str(conf_dir / "configuration.toml"), "env")
    assert proc.returncode == 0, proc.stderr
    assert tomllib.loads(proc.stdout)["config"]["hypervisor"]["qemu"]["default_memory"] == 512


def test_malformed_fragment_is_one_line_naming_file_and_line(conf_dir: Path) -> None:
    bad = conf_dir / "config.d/60-bad.toml"
    bad.write_text("[hypervisor.qemu]\ndefault_memory 512\n")
    proc = run("env", "--json", env={"KATA_CONF_FILE": str(conf_dir / "configuration.toml")})
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"kata-runtime: error: {bad}: invalid TOML")
    assert "line 2" in lines[0]


def test_usage_errors_exit_2_with_one_line() -> None:
    for args in (["no-such-verb"], [], ["--log-format", "xml", "env"]):
        proc = run(*args)
        assert proc.returncode == 2, args
        assert len(proc.stderr.splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith("kata-runtime: error: ")


def test_json_log_format_reports_errors_as_json(tmp_path: Path) -> None:
    proc = run("--log-format", "json", "--config", str(tmp_path / "missing.toml"), "env")
    assert proc.returncode == 1
    record = json.loads(proc.stderr)
    assert record["level"] == "error"
    assert "does not exist" in record["msg"]


def test_log_file_gets_the_error_record(tmp_path: Path) -> None:
    log = tmp_path / "runtime.log"
    proc = run("--log", str(log), "--log-format", "json", "--config", str(tmp_path / "no.toml"), "env")
    assert proc.returncode == 1
    assert proc.stderr.startswith("kata-runtime: error: ")
    assert json.loads(log.read_text().splitlines()[-1])["level"] == "error"


def test_version() -> None:
    proc = run("version")
    assert proc.returncode == 0
    assert "kata-runtime  : 0.1.0" in proc.stdout


@pytest.mark.parametrize("tool", ["kata-monitor"])
def test_unlanded_entry_points_say_so(tool: str) -> None:
    proc = run(tool=tool)
    assert proc.returncode == 2
    assert proc.stderr == f"{tool}: error: not implemented yet\n"
