"""The shim's command line: Go flag package semantics, containerd's invocations."""

from __future__ import annotations

import pytest

from kata.errors import UsageError
from kata.shim.main import ShimFlags, main, parse_flags


def test_containerds_start_invocation() -> None:
    flags = parse_flags(["-namespace", "default", "-address", "/run/containerd/containerd.sock",
                         "-publish-binary", "/usr/bin/containerd", "-id", "c1", "-debug", "start"])
    assert flags == ShimFlags(namespace="default", address="/run/containerd/containerd.sock",
                              publish_binary="/usr/bin/containerd", id="c1", debug=True, action="start")


def test_containerds_delete_invocation_and_the_daemons() -> None:
    delete = parse_flags(["-namespace", "k8s.io", "-address", "/a.sock", "-publish-binary", "/bin/c", "-id", "x",
                          "-bundle", "/b/x", "delete"])
    assert (delete.action, delete.bundle, delete.namespace) == ("delete", "/b/x", "k8s.io")
    daemon = parse_flags(["-namespace", "default", "-id", "x", "-address", "/a.sock", "-config", "/etc/k.toml"])
    assert (daemon.action, daemon.config, daemon.debug) == ("", "/etc/k.toml", False)


@pytest.mark.parametrize("argv", [["--namespace=ns", "--debug=false"], ["-namespace=ns", "-debug=0"],
                                  ["--namespace", "ns"]])
def test_go_spellings(argv: list[str]) -> None:
    flags = parse_flags(argv)
    assert (flags.namespace, flags.debug) == ("ns", False)


def test_a_value_may_start_with_a_dash_and_double_dash_ends_flags() -> None:
    assert parse_flags(["-id", "-odd"]).id == "-odd"
    assert parse_flags(["-id", "x", "--", "start"]).action == "start"


@pytest.mark.parametrize(("argv", "message"), [
    (["-nope", "x"], "flag provided but not defined: -nope"),
    (["-id"], "flag needs an argument: -id"),
    (["-debug=maybe"], "invalid boolean value"),
    (["---id", "x"], "bad flag syntax"),
    (["-id", "x", "frobnicate"], "unknown action"),
])
def test_bad_command_lines(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_flags(argv)


def test_main_reports_usage_errors_and_requires_a_namespace(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-nope"]) == 2
    assert main(["-id", "x", "start"]) == 2
    err = capsys.readouterr().err
    assert "flag provided but not defined" in err and "namespace cannot be empty" in err
    assert main(["-v"]) == 0
    assert "Version" in capsys.readouterr().out
