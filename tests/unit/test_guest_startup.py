"""The guest's fast start: Health before the rest (DeferredRouter), module stand-ins, the code cache,
the module loader's priority and what PID 1 imports before it serves."""

from __future__ import annotations

import dataclasses
import marshal
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from kata.guest import codecache, lazy, linux
from kata.guest import modules as guest_modules
from kata.guest.channel import channel_modules, unneeded_modules
from kata.guest.loading import DeferredRouter
from kata.guest.log import GuestLog
from kata.guest.reaper import Reaper
from kata.guest.services import health
from kata.image import python_runtime
from kata.protocols.pb import health_pb2, ttrpc_pb2
from kata.ttrpc import wire
from kata.ttrpc.dispatch import CallContext, Router
from kata.ttrpc.events import RequestReceived
from kata.ttrpc.status import DeadlineExceededError, InternalError, UnimplementedError

REPO = Path(__file__).resolve().parents[2]
KeyValue = ttrpc_pb2.KeyValue


def _log(tmp_path: Path, level: str = "info") -> tuple[GuestLog, Path]:
    out = tmp_path / "console"
    return GuestLog(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), level), out


def _event(service: str, method: str, payload: bytes = b"", stream_id: int = 1,
           timeout: float = 0.0) -> RequestReceived:
    return RequestReceived(stream_id, wire.Request(service, method, payload, int(timeout * 1e9)))


def _echo(request: KeyValue, context: CallContext) -> KeyValue:
    return KeyValue(key=request.key, value=context.method)


def _full_router() -> Router:
    router = Router()
    router.register("grpc.Health", {"Check": (KeyValue, KeyValue, _echo)})
    router.register("grpc.AgentService", {"Echo": (KeyValue, KeyValue, _echo)})
    return router


def test_early_services_answer_while_the_rest_waits_for_loading(tmp_path: Path) -> None:
    log, _ = _log(tmp_path)
    router = DeferredRouter(log)
    router.register("grpc.Health", {"Check": (KeyValue, KeyValue, _echo)})
    release = threading.Event()

    def build() -> Router:
        release.wait(5)
        return _full_router()

    router.load(build)
    check = router.prepare(_event("grpc.Health", "Check", KeyValue(key="h").SerializeToString()))
    assert check.encode(check.invoke()) == KeyValue(key="h", value="Check").SerializeToString()
    deferred = router.prepare(_event("grpc.AgentService", "Echo", KeyValue(key="a").SerializeToString(), 3))
    results: list[bytes] = []
    waiter = threading.Thread(target=lambda: results.append(deferred.encode(deferred.invoke())))
    waiter.start()
    time.sleep(0.05)
    assert not results and not router.loaded  # still waiting for the services
    release.set()
    waiter.join(5)
    assert results == [KeyValue(key="a", value="Echo").SerializeToString()]
    assert deferred.context.stream_id == 3
    assert router.loaded
    # Once loaded, everything goes through the full router, unknown names as usual.
    with pytest.raises(UnimplementedError):
        router.prepare(_event("grpc.AgentService", "Nope", stream_id=5)).invoke()


def test_a_deferred_call_keeps_its_deadline_and_a_failed_load_is_reported(tmp_path: Path) -> None:
    log, out = _log(tmp_path)
    router = DeferredRouter(log)
    gate = threading.Event()

    def broken() -> Router:
        gate.wait(5)
        raise ImportError("no module named kata.oci")

    router.load(broken)
    late = router.prepare(_event("grpc.AgentService", "Echo", timeout=0.05))
    with pytest.raises(DeadlineExceededError, match="still starting"):
        late.invoke()
    gate.set()
    call = router.prepare(_event("grpc.AgentService", "Echo", stream_id=3))
    with pytest.raises(InternalError, match=r"failed to load: no module named kata\.oci"):
        call.invoke()
    assert "agent services failed to load" in out.read_text()


def test_loading_waits_for_the_first_answer_or_an_idle_moment(tmp_path: Path) -> None:
    log, _ = _log(tmp_path)
    router = DeferredRouter(log)
    router.register("grpc.Health", {"Check": (KeyValue, KeyValue, _echo)})
    started: list[float] = []
    begin = time.monotonic()

    def build() -> Router:
        started.append(time.monotonic())
        return _full_router()

    router.load(build)
    router.prepare(_event("grpc.Health", "Check")).invoke()  # answering the first call starts it
    for _ in range(200):
        if router.loaded:
            break
        time.sleep(0.005)
    assert router.loaded and started[0] - begin < 1.0
    with pytest.raises(RuntimeError):
        router.load(_full_router)


def test_calls_are_timed_at_debug_level(tmp_path: Path) -> None:
    log, out = _log(tmp_path, "debug")
    router = DeferredRouter(log)
    router.register("grpc.Health", {"Check": (KeyValue, KeyValue, _echo)})
    call = router.prepare(_event("grpc.Health", "Check"))
    assert call.encode(call.invoke()) == KeyValue(value="Check").SerializeToString()
    assert "msg=rpc method=Check outcome=ok ms=" in out.read_text()


def test_a_deferred_module_loads_on_first_use_and_becomes_the_real_one() -> None:
    name = "colorsys"  # a stdlib module nothing here imports
    sys.modules.pop(name, None)
    lazy.defer(name)
    stand_in = sys.modules[name]
    assert isinstance(stand_in, lazy.DeferredModule)
    import colorsys

    assert colorsys is stand_in and not hasattr(stand_in, "__path__")
    assert colorsys.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)
    assert sys.modules[name] is not stand_in and sys.modules[name].__name__ == name
    lazy.defer(name)  # already imported: left alone
    assert not isinstance(sys.modules[name], lazy.DeferredModule)


def test_code_cache_replays_recorded_code_and_compiles_what_it_lacks(tmp_path: Path) -> None:
    cache: dict[tuple[str, str], object] = {}
    recorder = codecache.CachedCompiler("exec", cache, recording=True)  # type: ignore[arg-type]
    source = "def __create_fn__():\n def f(x):\n  return x + 1\n return f"
    namespace: dict[str, object] = {}
    recorder(source, {}, namespace)
    assert list(cache) == [("exec", source)] and recorder.misses == 1
    path = tmp_path / "cache.marshal"
    path.write_bytes(marshal.dumps(cache))
    replay = codecache.CachedCompiler("exec", marshal.loads(path.read_bytes()))
    namespace = {}
    replay(source, {}, namespace)
    assert namespace["__create_fn__"]()(1) == 2  # type: ignore[operator]
    assert replay.misses == 0
    replay("y = 3", {}, namespace)
    assert replay.misses == 1 and namespace["y"] == 3
    evaluate = codecache.CachedCompiler("eval", {})
    assert evaluate("1 + 2") == 3


def test_code_cache_install_without_a_file_changes_nothing(tmp_path: Path) -> None:
    assert codecache.install(("dataclasses",), path=str(tmp_path / "missing")) == 0
    assert not isinstance(getattr(dataclasses, "exec", None), codecache.CachedCompiler)


def test_recorded_dataclasses_behave_as_compiled_ones(tmp_path: Path) -> None:
    out = tmp_path / "cache.marshal"
    program = ("import sys; from kata.guest import codecache; codecache.main(sys.argv[1:]); "
               "codecache.install(path=sys.argv[1]); import dataclasses, importlib, kata.oci.model as m; "
               "importlib.reload(m); p = m.Process(args=('sh',), cwd='/'); "
               "print(p == m.Process(args=('sh',), cwd='/'), p.args, dataclasses.exec.misses)")
    proc = subprocess.run([sys.executable, "-c", program, str(out), "kata.oci.model"], capture_output=True,
                          text=True, check=True, cwd=REPO, timeout=60)
    assert proc.stdout.splitlines()[-1] == "True ('sh',) 0"  # every class of the reload came from the cache
    assert len(marshal.loads(out.read_bytes())) > 10


def test_loader_goes_to_the_background_after_the_channel_modules(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    log, _ = _log(tmp_path)
    loaded: list[str] = []
    niced: list[int] = []

    def load_module(path: str) -> bool:
        loaded.append(path)
        return True

    def nice(increment: int) -> int:
        niced.append(len(loaded))
        return increment

    monkeypatch.setattr(linux, "load_module", load_module)
    monkeypatch.setattr(os, "nice", nice)
    modules = ["/m/virtio_pci.ko", "/m/virtio_console.ko", "/m/virtio_mmio.ko", "/m/virtio-blk.ko"]
    assert guest_modules.load_modules(modules, log, urgent=("virtio_console", "virtio_pci")) == 0
    assert loaded == modules and niced == [2]
    niced.clear()
    loaded.clear()
    guest_modules.load_modules(modules, log, urgent=("virtio_console", "virtio_mmio"))  # microvm
    assert niced == [3]
    niced.clear()
    loaded.clear()
    guest_modules.load_modules(modules, log, urgent=("vmw_vsock_virtio_transport", "virtio_pci"))
    assert niced == []  # not in the list: everything stays urgent
    assert guest_modules.module_name("/lib/modules/x/kernel/fs/9p/9p.ko") == "9p"


def test_channel_modules_follow_the_bus(tmp_path: Path) -> None:
    devices = tmp_path / "pci"
    devices.mkdir()
    assert channel_modules("serial", str(devices)) == ("virtio_console", "virtio_mmio")
    (devices / "0000:00:01.0").mkdir()
    assert channel_modules("serial", str(devices)) == ("virtio_console", "virtio_pci")
    assert channel_modules("vsock", str(devices)) == ("vmw_vsock_virtio_transport", "virtio_pci")


def test_modules_of_another_transport_or_channel_are_skipped(tmp_path: Path) -> None:
    q35_serial = unneeded_modules("serial", "virtio_pci")
    assert {"virtio_mmio", "vsock", "vmw_vsock_virtio_transport"} <= q35_serial
    assert not q35_serial & {"virtio_pci", "virtio_console", "virtiofs", "fuse"}
    assert unneeded_modules("vsock", "virtio_pci") == {"virtio_mmio"}
    assert "virtio_pci" in unneeded_modules("serial", "virtio_mmio")  # microvm has no PCI bus
    log, _ = _log(tmp_path)
    listing = tmp_path / "modules"
    listing.write_text("/m/virtio_pci.ko\n/m/virtio_console.ko\n/m/virtio_mmio.ko\n/m/fuse.ko\n")
    loader = guest_modules.ModuleLoader(log, Reaper(), sys_module=str(tmp_path / "sys"))
    forked: list[bool] = []

    def fork() -> int:
        forked.append(True)
        return 4242

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "fork", fork)
        patch.setattr(loader._reaper, "watch", lambda pid, callback: None)
        loader.start(str(listing), urgent=("virtio_console", "virtio_pci"), skip=q35_serial)
    assert forked and loader._listed == {"virtio_pci", "virtio_console", "fuse"}
    assert loader.wait(0.01, ("virtio_mmio",))  # skipped: nothing to wait for


def test_builder_and_guest_agree_on_the_code_cache_path() -> None:
    assert python_runtime.CODECACHE_FILE.parent == python_runtime.AGENT_LIB_DIR


def test_pid1_boot_path_leaves_the_agent_services_and_protobufs_for_later() -> None:
    program = ("import sys; from kata.guest import codecache, lazy; lazy.defer(*lazy.UNUSED_IN_GUEST); "
               "import kata.guest.init, kata.guest.server, kata.guest.services.health; print(' '.join(sys.modules))")
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, 'src'); {program}"],
                         capture_output=True, text=True, check=True, cwd=REPO, timeout=60)
    loaded = set(out.stdout.split())
    later = {"kata.guest.runtime", "kata.guest.services.containers", "kata.oci", "kata.protocols.pb.agent_pb2",
             "kata.protocols.pb.oci_pb2", "kata.protocols.services", "dataclasses", "asyncio", "socket"}
    assert not loaded & later
    # Health is answered before protobuf's runtime (descriptors, upb) is imported.
    assert not {m for m in loaded if m.startswith("kata.protocols.pb") or m.startswith("google._upb")}
    assert "google.protobuf.descriptor_pool" not in loaded


@given(st.text(max_size=12), st.integers(-(2**31), 2**31 - 1), st.text(max_size=8), st.text(max_size=8))
@settings(max_examples=200, deadline=None)
def test_hand_coded_health_messages_match_health_pb2(service: str, status: int, grpc: str, agent: str) -> None:
    pairs = [(health.CheckRequest(service), health_pb2.CheckRequest(service=service)),
             (health.HealthCheckResponse(status), health_pb2.HealthCheckResponse(status=status)),  # type: ignore[arg-type]
             (health.VersionCheckResponse(grpc, agent),
              health_pb2.VersionCheckResponse(grpc_version=grpc, agent_version=agent))]
    for ours, theirs in pairs:
        data = theirs.SerializeToString()
        assert ours.SerializeToString() == data
        assert type(ours).FromString(data) == ours
    kinds = ((health.CheckRequest, health_pb2.CheckRequest, ("service",)),
             (health.HealthCheckResponse, health_pb2.HealthCheckResponse, ("status",)),
             (health.VersionCheckResponse, health_pb2.VersionCheckResponse, ("grpc_version", "agent_version")))
    for junk in (b"\x0a\x02\xc3\x28", b"\x08", b"\x0a\x05ab", b"\x12\x01\xff", b"\x12\x01a", b"\x0c", b"\x08\x7f"):
        for ours_type, theirs_type, names in kinds:
            verdicts: list[tuple[object, ...] | None] = []
            for decode in (ours_type.FromString, theirs_type.FromString):
                try:
                    message = decode(junk)
                except DecodeError:
                    verdicts.append(None)
                else:
                    verdicts.append(tuple(getattr(message, name) for name in names))
            assert verdicts[0] == verdicts[1], (junk, ours_type)


def test_health_answers_serving_without_protobufs_runtime() -> None:
    methods = health.health_methods()
    request_type, response_type, handler = methods["Check"]
    answer = handler(request_type.FromString(b""), CallContext("grpc.Health", "Check"))
    assert isinstance(answer, response_type)
    assert health_pb2.HealthCheckResponse.FromString(answer.SerializeToString()).status == \
        health_pb2.HealthCheckResponse.SERVING
    version = methods["Version"][2]
    reply = health_pb2.VersionCheckResponse.FromString(version(None, CallContext("grpc.Health", "Version"))
                                                       .SerializeToString())
    assert reply.agent_version == health.AGENT_VERSION and reply.grpc_version == "pykata-ttrpc"


def test_waiting_for_named_modules_ends_when_they_are_live(tmp_path: Path) -> None:
    log, _ = _log(tmp_path)
    listing = tmp_path / "modules"
    listing.write_text("/m/fuse.ko\n/m/virtiofs.ko\n/m/scsi_mod.ko\n")
    sys_module = tmp_path / "sys"
    loader = guest_modules.ModuleLoader(log, Reaper(), sys_module=str(sys_module))
    loader._listed = frozenset(guest_modules.module_name(m) for m in guest_modules.read_module_list(str(listing)))
    loader.pid = 0  # no real loader: the test plays the kernel
    assert loader.wait(0.05, ("ext4",))  # not listed: built in or absent, nothing to wait for
    assert not loader.wait(0.05, ("virtiofs",))
    (sys_module / "virtiofs").mkdir(parents=True)
    (sys_module / "virtiofs" / "initstate").write_text("coming\n")
    assert not loader.wait(0.05, ("virtiofs",))
    (sys_module / "virtiofs" / "initstate").write_text("live\n")
    assert loader.wait(0.05, ("virtiofs",))
    assert not loader.wait(0.05)  # everything: the loader has not finished
    loader.exit_code = 0
    assert loader.wait(0.05) and loader.wait(0.05, ("scsi_mod",))


def test_storages_wait_for_their_own_modules() -> None:
    from kata.guest.services.storage import StorageManager
    from kata.protocols.pb import agent_pb2

    def modules(driver: str, fstype: str) -> tuple[str, ...]:
        return StorageManager.modules_for(agent_pb2.Storage(driver=driver, fstype=fstype))

    assert modules("virtio-fs", "virtiofs") == ("virtiofs",)
    assert modules("9p", "9p") == ("9pnet_virtio", "9p")
    assert modules("blk", "erofs") == ("virtio_blk", "erofs")
    assert modules("ephemeral", "tmpfs") == ()


def test_a_waiter_gives_the_background_loader_its_priority_back(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    log, _ = _log(tmp_path)
    calls: list[tuple[int, int, int]] = []
    monkeypatch.setattr(os, "setpriority", lambda which, who, nice: calls.append((which, who, nice)))
    loader = guest_modules.ModuleLoader(log, Reaper(), sys_module=str(tmp_path / "sys"))
    loader._listed = frozenset({"virtio_console", "virtio_pci", "virtiofs"})
    loader.pid = 4242
    loader.wait(0.01, ("virtiofs",))
    assert calls == []  # a loader that never went to the background is left alone
    loader._background = True
    loader.wait(0.01, ("virtiofs",))
    assert calls == [(os.PRIO_PROCESS, 4242, 0), (os.PRIO_PROCESS, 4242, guest_modules.BACKGROUND_NICE)]
