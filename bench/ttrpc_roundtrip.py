"""Small unary round trips per second over a unix socket: our asyncio ttRPC vs grpcio, as a ratio table.

Usage: python bench/ttrpc_roundtrip.py [--seconds S] [--concurrency C]

Each server runs in its own process (as agent and shim do), the client in this one.
Request: ttrpc_pb2.KeyValue; response: ttrpc_pb2.StringList (a few bytes each).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent import futures

import grpc  # type: ignore[import-untyped]  # grpcio ships no type stubs

from kata.protocols.pb import ttrpc_pb2
from kata.ttrpc import CallContext, Router
from kata.ttrpc.aio import AsyncServer, connect_unix

SERVICE = "bench.Echo"
METHOD = "Echo"
REQUEST = ttrpc_pb2.KeyValue(key="container-id", value="0123456789abcdef")


def echo(request: ttrpc_pb2.KeyValue, context: object) -> ttrpc_pb2.StringList:
    return ttrpc_pb2.StringList(list=[request.key, request.value])


async def echo_async(request: ttrpc_pb2.KeyValue, context: CallContext) -> ttrpc_pb2.StringList:
    return echo(request, context)


# Servers (run in a child process).


async def serve_ttrpc(path: str) -> None:
    router = Router()
    router.register(SERVICE, {METHOD: (ttrpc_pb2.KeyValue, ttrpc_pb2.StringList, echo_async)})
    server = AsyncServer(router)
    await server.listen_unix(path)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    await server.close()


def serve_grpc(path: str) -> None:
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            METHOD: grpc.unary_unary_rpc_method_handler(
                echo,
                request_deserializer=ttrpc_pb2.KeyValue.FromString,
                response_serializer=ttrpc_pb2.StringList.SerializeToString,
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"unix:{path}")
    server.start()
    print("ready", flush=True)
    sys.stdin.read()
    server.stop(grace=None)


# Clients (this process).


def run_for(seconds: float, batch: Callable[[], int]) -> float:
    """Calls per second of ``batch`` (which returns how many calls it made), after a warm-up."""
    batch()
    calls = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        calls += batch()
    return calls / elapsed


def bench_ttrpc(path: str, seconds: float, concurrency: int) -> tuple[float, float]:
    async def main() -> tuple[float, float]:
        client = await connect_unix(path)

        async def one() -> None:
            response = await client.call(SERVICE, METHOD, REQUEST, ttrpc_pb2.StringList)
            assert len(response.list) == 2

        async def sequential() -> int:
            for _ in range(200):
                await one()
            return 200

        async def concurrent() -> int:
            await asyncio.gather(*(one() for _ in range(concurrency)))
            return concurrency

        results = (await run_async(seconds, sequential), await run_async(seconds, concurrent))
        await client.close()
        return results

    return asyncio.run(main())


async def run_async(seconds: float, batch: Callable[[], Awaitable[int]]) -> float:
    await batch()
    calls = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        calls += await batch()
    return calls / elapsed


def bench_grpc(path: str, seconds: float, concurrency: int) -> tuple[float, float]:
    with grpc.insecure_channel(f"unix:{path}") as channel:
        call = channel.unary_unary(
            f"/{SERVICE}/{METHOD}",
            request_serializer=ttrpc_pb2.KeyValue.SerializeToString,
            response_deserializer=ttrpc_pb2.StringList.FromString,
        )

        def sequential() -> int:
            for _ in range(200):
                assert len(call(REQUEST).list) == 2
            return 200

        def concurrent() -> int:
            pending = [call.future(REQUEST) for _ in range(concurrency)]
            for future in pending:
                assert len(future.result().list) == 2
            return concurrency

        return run_for(seconds, sequential), run_for(seconds, concurrent)


def with_server(kind: str, bench: Callable[[str], tuple[float, float]]) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="ttrpc-bench-") as tmp:
        path = os.path.join(tmp, f"{kind}.sock")
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, "--socket", path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdin is not None and child.stdout is not None
        try:
            if child.stdout.readline().strip() != "ready":
                raise SystemExit(f"{kind} server did not start")
            return bench(path)
        finally:
            child.stdin.close()
            child.wait(timeout=10)
            child.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per case")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight in the concurrent case")
    parser.add_argument("--serve", choices=["ttrpc", "grpc"], help=argparse.SUPPRESS)
    parser.add_argument("--socket", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "ttrpc":
        asyncio.run(serve_ttrpc(args.socket))
        return
    if args.serve == "grpc":
        serve_grpc(args.socket)
        return
    ours = with_server("ttrpc", lambda path: bench_ttrpc(path, args.seconds, args.concurrency))
    theirs = with_server("grpc", lambda path: bench_grpc(path, args.seconds, args.concurrency))
    print(f"Unary round trips per second over a unix socket ({args.seconds:g} s per case)")
    print(f"{'case':<26} {'pykata ttRPC':>13} {'grpcio':>10} {'ratio':>7}")
    cases = ("sequential (1 in flight)", f"concurrent ({args.concurrency} in flight)")
    for case, mine, other in zip(cases, ours, theirs, strict=True):
        print(f"{case:<26} {mine:>13,.0f} {other:>10,.0f} {mine / other:>6.2f}x")


if __name__ == "__main__":
    main()
