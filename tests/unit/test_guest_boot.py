"""Pure parts of the guest's PID 1: command line, console log, channel lookup, reaper."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from kata.guest import modules as guest_modules
from kata.guest.agent import GuestContext
from kata.guest.channel import find_serial_port
from kata.guest.cmdline import GuestOptions, parse_cmdline, parse_server_addr
from kata.guest.init import IMAGE_INFO, read_image_info
from kata.guest.log import GuestLog
from kata.guest.modules import ModuleLoader
from kata.guest.reaper import Reaper
from kata.image import tree


def _context(tmp_path: Path) -> tuple[GuestContext, Path]:
    out = tmp_path / "console"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    log = GuestLog(fd)
    reaper = Reaper()
    return GuestContext(GuestOptions(), log, reaper, ModuleLoader(log, reaper)), out


def test_cmdline_defaults_and_agent_parameters() -> None:
    options = parse_cmdline("console=ttyS0 quiet")
    assert (options.channel_kind, options.channel_name) == ("serial", "agent.channel.0")
    assert options.log_level == "info"
    options = parse_cmdline("agent.server_addr=vsock://-1:1024 agent.log=debug agent.channel_timeout=2.5")
    assert (options.channel_kind, options.channel_name, options.log_level) == ("vsock", "1024", "debug")
    assert options.channel_timeout == 2.5
    assert options.problems == []


def test_bad_parameters_are_collected_not_fatal() -> None:
    options = parse_cmdline("agent.server_addr=tcp://x agent.channel_timeout=soon")
    assert len(options.problems) == 2
    assert options.channel_kind == "serial"


@pytest.mark.parametrize("addr", ["vsock://-1:port", "serial://", "agent.channel.0"])
def test_malformed_server_addr(addr: str) -> None:
    with pytest.raises(ValueError, match=r"agent\.server_addr"):
        parse_server_addr(addr)


def test_log_lines_carry_the_sandbox_id_once_known(tmp_path: Path) -> None:
    context, out = _context(tmp_path)
    context.log.info("before", kernel="6.1.0")
    context.log.sandbox_id = "sb-1234"  # what CreateSandbox does
    context.log.debug("hidden")
    context.log.warning("after", error="two words")
    lines = out.read_text().splitlines()
    assert "sandbox=" not in lines[0] and "kernel=6.1.0" in lines[0] and "level=info" in lines[0]
    assert all("sandbox=sb-1234" in line for line in lines[1:])
    assert lines[-1].endswith('msg=after error="two words"')
    assert len(lines) == 2



def test_find_serial_port_waits_for_the_name_and_node(tmp_path: Path) -> None:
    ports, dev = tmp_path / "virtio-ports", tmp_path / "dev"
    (ports / "vport0p0").mkdir(parents=True)
    (ports / "vport0p0" / "name").write_text("\n")
    (ports / "vport0p1").mkdir()
    (ports / "vport0p1" / "name").write_text("agent.channel.0\n")
    dev.mkdir()
    with pytest.raises(TimeoutError, match=r"agent\.channel\.0"):
        find_serial_port("agent.channel.0", 0.02, ports_dir=str(ports), dev_dir=str(dev))
    (dev / "vport0p1").touch()
    assert find_serial_port("agent.channel.0", 1, ports_dir=str(ports), dev_dir=str(dev)) == f"{dev}/vport0p1"


def test_reaper_hands_out_exit_codes_early_or_late() -> None:
    reaper = Reaper()
    seen: dict[int, int] = {}
    early = os.fork()
    if early == 0:
        os._exit(3)
    late = os.fork()
    if late == 0:
        time.sleep(0.2)
        os._exit(4)
    time.sleep(0.1)
    reaper.reap()
    reaper.watch(early, seen.__setitem__)
    reaper.watch(late, seen.__setitem__)
    deadline = time.monotonic() + 5
    while late not in seen and time.monotonic() < deadline:
        reaper.reap()
        time.sleep(0.01)
    assert seen == {early: 3, late: 4}


def test_module_loader_without_a_list_is_done(tmp_path: Path) -> None:
    context, out = _context(tmp_path)
    context.modules.start(str(tmp_path / "missing"))
    assert context.modules.wait(0) and context.modules.exit_code == 0
    assert "no module list" in out.read_text()


def test_builder_and_guest_agree_on_paths(tmp_path: Path) -> None:
    assert "/" + tree.MODULE_LIST == guest_modules.MODULE_LIST
    assert "/" + tree.IMAGE_INFO == IMAGE_INFO
    (tmp_path / "etc" / "kata-agent").mkdir(parents=True)
    tree.write_image_info(tmp_path, {"key": "abc", "kernel": "6.1.0"})
    assert read_image_info(str(tmp_path / tree.IMAGE_INFO)) == {"key": "abc", "kernel": "6.1.0"}
