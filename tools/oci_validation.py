"""Run the OCI runtime-tools validation suite against runtimes and tabulate pass/fail per test program.

Usage:
    python tools/oci_validation.py --suite DIR --tap PATH [--runtime NAME=PATH ...] [--only GLOB]
        [--raw-dir DIR] [--json OUT] [--lock FILE]

``--suite`` is a runtime-tools checkout (github opencontainers/runtime-tools, commit 260e151) with the
programs built (``make runtimetest validation-executables`` with Debian's Go 1.19, vendored deps);
``--tap`` is node-tap's ``tap`` (``npm install tap@16``). Each runtime runs the whole suite one program at
a time (``RUNTIME=PATH tap -j1 validation/*/*.t``); the raw TAP goes to ``--raw-dir``. Counted are the
assertions of each program (the TAP lines one level below the program's own line): ``ok`` (minus
``# SKIP``), ``not ok``, skipped. The table has a row per program and a total per runtime.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

_POINT = re.compile(r"^(?P<indent> *)(?P<not>not )?ok \d+(?: - (?P<name>[^#]*))?\s*(?P<directive>#.*)?$")


@dataclass
class Counts:
    """Assertions of one program under one runtime."""

    passed: int = 0
    failed: int = 0
    skipped: int = 0


def parse(tap: str) -> dict[str, Counts]:
    """Per program (top-level test name): its assertions one level down."""
    results: dict[str, Counts] = {}
    pending = Counts()
    for line in tap.splitlines():
        match = _POINT.match(line)
        if match is None:
            continue
        depth = len(match["indent"]) // 4
        if depth == 1:
            if "skip" in (match["directive"] or "").lower():
                pending.skipped += 1
            elif match["not"]:
                pending.failed += 1
            else:
                pending.passed += 1
        elif depth == 0:
            name = Path((match["name"] or "?").strip()).parent.name or (match["name"] or "?").strip()
            if pending.passed + pending.failed + pending.skipped == 0 and match["not"]:
                pending.failed = 1  # the program died before its first assertion
            results[name] = pending
            pending = Counts()
    return results


def run_suite(suite: Path, tap: str, runtime: str, programs: list[str], timeout: int, *, lock: str = "") -> str:
    """The raw TAP of the suite run with ``RUNTIME=runtime``; with ``lock``, each program runs alone under
    ``flock LOCK`` (so VM test suites on the same machine take turns with it)."""
    env = {**os.environ, "RUNTIME": runtime}
    argv = [tap, "--no-coverage", "-j1", f"--timeout={timeout}", "--reporter=tap"]
    batches = [[program] for program in programs] if lock else [programs]
    output = []
    for batch in batches:
        prefix = ["flock", lock] if lock else []
        proc = subprocess.run([*prefix, *argv, *batch], cwd=suite, env=env, capture_output=True, text=True,
                              check=False)
        output.append(proc.stdout + proc.stderr)
        if lock:
            print(f"{runtime}: {batch[0]}: {sum(c.passed for c in parse(output[-1]).values())} ok", flush=True)
    return "\n".join(output)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", type=Path, required=True)
    parser.add_argument("--tap", required=True)
    parser.add_argument("--runtime", action="append", default=[], help="NAME=PATH (repeatable)")
    parser.add_argument("--only", default="*", help="glob over program names (e.g. 'linux_*')")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per program")
    parser.add_argument("--raw-dir", type=Path, default=Path("/tmp/oci-validation"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--lock", default="", help="flock this file around each program (e.g. /tmp/pykata-vm.lock)")
    args = parser.parse_args()
    programs = sorted(str(p.relative_to(args.suite)) for p in args.suite.glob("validation/*/*.t")
                      if fnmatch.fnmatch(p.parent.name, args.only))
    if not programs:
        print(f"no validation programs in {args.suite} (build them: make runtimetest validation-executables)",
              file=sys.stderr)
        return 1
    args.raw_dir.mkdir(parents=True, exist_ok=True)
    table: dict[str, dict[str, Counts]] = {}
    for spec in args.runtime or ["runc=runc"]:
        name, _, path = spec.partition("=")
        raw = run_suite(args.suite, args.tap, path or name, programs, args.timeout, lock=args.lock)
        (args.raw_dir / f"{name}.tap").write_text(raw)
        table[name] = parse(raw)
    names = list(table)
    rows = sorted({program for counts in table.values() for program in counts})
    print("| program | " + " | ".join(f"{n} pass | {n} fail" for n in names) + " |")
    print("|---|" + "---:|---:|" * len(names))
    for program in rows:
        cells = []
        for name in names:
            counts = table[name].get(program, Counts())
            cells.append(f"{counts.passed} | {counts.failed}")
        print(f"| {program} | " + " | ".join(cells) + " |")
    totals = {n: Counts(sum(c.passed for c in t.values()), sum(c.failed for c in t.values()),
                        sum(c.skipped for c in t.values())) for n, t in table.items()}
    print("| **total** | " + " | ".join(f"**{t.passed}** | **{t.failed}**" for t in totals.values()) + " |")
    if args.json:
        args.json.write_text(json.dumps({n: {p: asdict(c) for p, c in t.items()} for n, t in table.items()},
                                        indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
