"""kata-runtime's OCI verbs without a VM: flags, signal names, state JSON, process.json, and the verbs that
need no sandbox (spec, features, list, state/delete of a missing container, --version)."""

from __future__ import annotations

import array
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kata.cli.main import build_parser
from kata.errors import UsageError
from kata.oci_cli.console import HostPty, send_console, window_size
from kata.oci_cli.errors import OciCliError
from kata.oci_cli.layout import ContainerPaths, ContainerRecord, check_container_id, now_rfc3339
from kata.oci_cli.process import exec_process, parse_user, read_process_file
from kata.oci_cli.report import features
from kata.oci_cli.signals import parse_signal
from kata.oci_cli.statejson import list_table, oci_state, ps_table
from kata.oci_cli.units import parse_bytes, parse_duration

BIN = Path(sys.executable).parent


def kata(*args: str, root: Path | None = None) -> subprocess.CompletedProcess[str]:
    prefix = ["--root", str(root)] if root is not None else []
    return subprocess.run([str(BIN / "kata-runtime"), *prefix, *args], capture_output=True, text=True, timeout=60,
                          check=False)


@pytest.mark.parametrize(("raw", "number"), [
    ("15", 15), ("TERM", 15), ("SIGTERM", 15), ("sigkill", 9), ("kill", 9), ("HUP", 1), ("SIGUSR1", 10),
    ("RTMIN", signal.SIGRTMIN), ("SIGRTMIN+3", signal.SIGRTMIN + 3), ("64", 64), ("0", 0)])
def test_signal_names_and_numbers(raw: str, number: int) -> None:
    assert parse_signal(raw) == number


@pytest.mark.parametrize("raw", ["65", "SIGNOPE", "", "-9", "RTMAX+1"])
def test_bad_signals(raw: str) -> None:
    with pytest.raises(UsageError):
        parse_signal(raw)


def test_runc_flags_parse_with_the_command_after_the_id() -> None:
    parser = build_parser()
    args = parser.parse_args(["--root", "/r", "--log", "/l.json", "--log-format", "json", "--systemd-cgroup",
                              "exec", "-t", "--pid-file", "p", "-e", "A=1", "-e", "B=2", "c1", "sh", "-c", "ls -l"])
    assert (args.root, args.log, args.log_format, args.systemd_cgroup) == ("/r", "/l.json", "json", True)
    assert (args.verb, args.tty, args.pid_file, args.env, args.container_id, args.command) == (
        "exec", True, "p", ["A=1", "B=2"], "c1", ["sh", "-c", "ls -l"])
    create = parser.parse_args(["create", "--bundle", "/b", "--pid-file", "/p", "--console-socket", "/s",
                                "--no-pivot", "--preserve-fds", "2", "c2"])
    assert (create.bundle, create.console_socket, create.no_pivot, create.preserve_fds) == ("/b", "/s", True, 2)
    kill = parser.parse_args(["kill", "--all", "c3", "KILL"])
    assert (kill.all, kill.container_id, kill.signal) == (True, "c3", "KILL")
    assert parser.parse_args(["kill", "c3"]).signal == "SIGTERM"
    assert parser.parse_args(["delete", "--force", "c4"]).force
    assert parser.parse_args(["run", "-d", "c5"]).detach
    listing = parser.parse_args(["list", "-q", "--format", "json"])
    assert (listing.quiet, listing.format) == (True, "json")
    update = parser.parse_args(["update", "-r", "-", "--memory", "512m", "c6"])
    assert (update.resources, update.memory) == ("-", "512m")


def test_state_json_is_runcs_shape() -> None:
    record = ContainerRecord(id="c1", bundle="/b", rootfs="/b/rootfs", created="2026-11-23T20:00:00.000000001Z",
                             pid=123, annotations={"a": "b"})
    running = oci_state(record, "running", 123)
    assert list(running) == ["ociVersion", "id", "pid", "status", "bundle", "rootfs", "created", "annotations",
                             "owner"]
    assert (running["pid"], running["status"], running["owner"]) == (123, "running", "")
    assert oci_state(record, "stopped", 123)["pid"] == 0
    assert "annotations" not in oci_state(ContainerRecord(id="c", bundle="/b", rootfs="/r", created="t"), "created", 1)


def test_list_table_and_ps_filter() -> None:
    table = list_table([{"id": "c1", "pid": 7, "status": "running", "bundle": "/b", "created": "T", "owner": "root"}])
    assert table.splitlines() == ["ID          PID         STATUS      BUNDLE      CREATED     OWNER",
                                  "c1          7           running     /b          T           root"]
    ps = ps_table("UID PID PPID CMD", ["root 1 0 init", "root 42 1 qemu", "root 43 1 other"], [42])
    assert ps.splitlines() == ["UID PID PPID CMD", "root 42 1 qemu"]


def test_exec_process_applies_runcs_flags_to_the_containers_process() -> None:
    base = {"terminal": True, "user": {"uid": 0, "gid": 0}, "args": ["sh"], "env": ["PATH=/bin"], "cwd": "/",
            "capabilities": {"bounding": ["CAP_KILL"]}, "consoleSize": {"height": 1, "width": 2}}
    process = exec_process(base, ["ls", "-l"], cwd="/tmp", env=["A=1"], user="1000:1001", additional_gids=[5],
                           caps=["CAP_NET_ADMIN"], no_new_privs=True)
    assert process["args"] == ["ls", "-l"] and process["cwd"] == "/tmp" and process["terminal"] is False
    assert process["env"] == ["PATH=/bin", "A=1"]
    assert process["user"] == {"uid": 1000, "gid": 1001, "additionalGids": [5]}
    assert process["capabilities"]["bounding"] == ["CAP_KILL", "CAP_NET_ADMIN"]
    assert process["capabilities"]["ambient"] == ["CAP_NET_ADMIN"]
    assert process["noNewPrivileges"] is True and "consoleSize" not in process
    assert base["args"] == ["sh"]  # not modified
    assert exec_process(base, ["true"], tty=True)["terminal"] is True
    with pytest.raises(OciCliError, match="args must not be empty"):
        exec_process(base, [])
    with pytest.raises(OciCliError, match="Cwd must be an absolute path"):
        exec_process(base, ["true"], cwd="tmp")
    with pytest.raises(UsageError):
        parse_user("root")
    assert parse_user("7") == (7, None)


def test_process_file(tmp_path: Path) -> None:
    good = tmp_path / "p.json"
    good.write_text(json.dumps({"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}}))
    assert read_process_file(str(good))["args"] == ["true"]
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(OciCliError, match="not JSON"):
        read_process_file(str(bad))
    with pytest.raises(OciCliError, match="open"):
        read_process_file(str(tmp_path / "missing.json"))


def test_units() -> None:
    assert parse_duration("5s") == 5 and parse_duration("100ms") == 0.1 and parse_duration("1m30s") == 90
    assert parse_bytes("512m") == 512 << 20 and parse_bytes("1g") == 1 << 30 and parse_bytes("1024") == 1024
    assert parse_bytes("-1") == -1 and parse_bytes("2KiB") == 2048
    for bad in ("5", "s", "1x"):
        with pytest.raises(UsageError):
            parse_duration(bad)
    with pytest.raises(UsageError):
        parse_bytes("lots")


def test_ids_paths_and_times() -> None:
    assert check_container_id("a1.b_c-d") == "a1.b_c-d"
    for bad in (".oci", "", "a/b", "x" * 129):
        with pytest.raises(OciCliError):
            check_container_id(bad)
    paths = ContainerPaths(Path("/run/kata"), "c1")
    assert (paths.directory, paths.socket, paths.io_dir("")) == (
        Path("/run/kata/.oci/c1"), Path("/run/kata/.oci/c1/daemon.sock"), Path("/run/kata/.oci/c1/io/init"))
    assert now_rfc3339(1.5) == "1970-01-01T00:00:01.500000000Z"


def test_console_socket_receives_one_fd_named_by_the_pty(tmp_path: Path) -> None:
    """runc's SendFd: one SCM_RIGHTS fd, the name as the data; the slave is raw."""
    path = str(tmp_path / "console.sock")
    pty = HostPty()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)
        send_console(path, pty.master, pty.name)
        connection, _ = listener.accept()
        with connection:
            fds = array.array("i")
            data, ancillary, _, _ = connection.recvmsg(4096, socket.CMSG_SPACE(fds.itemsize))
    fds.frombytes(ancillary[0][2][:fds.itemsize])
    received = fds[0]
    try:
        assert data.decode() == pty.name and pty.name.startswith("/dev/pts/")
        os.write(received, b"x")
        assert os.read(pty.slave, 1) == b"x"  # raw: no line buffering
        assert window_size(pty.slave) == (0, 0)
    finally:
        os.close(received)
        pty.close_master()
        os.close(pty.slave)
    with pytest.raises(OciCliError, match="send the console"):
        send_console(str(tmp_path / "nobody.sock"), 0, "x")


def test_features_document() -> None:
    document = features()
    assert document["ociVersionMin"] == "1.0.0" and document["ociVersionMax"] == "1.1.0"
    assert "CAP_SYS_ADMIN" in document["linux"]["capabilities"]
    proc = kata("features")
    assert proc.returncode == 0 and json.loads(proc.stdout) == document


def test_spec_writes_runcs_default_once(tmp_path: Path) -> None:
    assert kata("spec", "--bundle", str(tmp_path)).returncode == 0
    spec = json.loads((tmp_path / "config.json").read_text())
    assert spec["process"]["args"] == ["sh"] and spec["root"] == {"path": "rootfs", "readonly": True}
    again = kata("spec", "--bundle", str(tmp_path))
    assert (again.returncode, again.stderr) == (1, "kata-runtime: error: File config.json exists. Remove it first.\n")


def test_verbs_on_missing_containers(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for verb in ("state", "start", "kill", "pause", "delete"):
        proc = kata(verb, "nope", root=root)
        assert (proc.returncode, proc.stderr) == (1, "kata-runtime: error: container nope does not exist\n"), verb
    assert kata("delete", "--force", "nope", root=root).returncode == 0
    assert kata("list", root=root).stdout.split() == ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
    assert kata("list", "--format", "json", root=root).stdout == "[]\n"
    assert kata("list", "-q", root=root).stdout == ""
    invalid = kata("state", ".bad", root=root)
    assert invalid.returncode == 1 and "invalid container id" in invalid.stderr


def test_create_with_a_bad_bundle_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    proc = kata("create", "--bundle", str(tmp_path / "nowhere"), "c1", root=root)
    assert proc.returncode == 1 and "config.json" in proc.stderr
    assert not (root / ".oci" / "c1").exists()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text(json.dumps({"process": {"terminal": True, "args": ["sh"],
                                                                        "cwd": "/"}, "root": {"path": "r"}}))
    tty = kata("create", "--bundle", str(tmp_path / "b"), "c1", root=root)
    assert "cannot allocate tty if runc will detach without setting console socket" in tty.stderr
    assert not (root / ".oci").exists()


def test_json_errors_and_runc_style_version(tmp_path: Path) -> None:
    proc = kata("--log-format", "json", "state", "nope", root=tmp_path)
    record = json.loads(proc.stderr)
    assert (proc.returncode, record["level"], record["msg"]) == (1, "error", "container nope does not exist")
    assert "time" in record
    log = tmp_path / "log.json"
    logged = kata("--log", str(log), "--log-format", "json", "kill", "nope", "9", root=tmp_path)
    assert logged.returncode == 1 and json.loads(log.read_text().splitlines()[-1])["msg"] == (
        "container nope does not exist")
    version = kata("--version").stdout.splitlines()
    assert version[0].startswith("kata-runtime version ") and version[2] == "spec: 1.1.0"
