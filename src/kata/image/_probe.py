"""Run by the guest's python3.11 at build time: import modules, print every module loaded and its file.

Usage: python3.11 -I -S _probe.py AGENT_LIB_DIR MODULE... (a name starting with ``?`` may be an
attribute rather than a module: its absence is not an error). Prints ``name<TAB>origin`` lines, then
``!error<TAB>name<TAB>message`` lines for modules that failed to import. Imports nothing itself, so
the listing is exactly what the guest's start-up plus those imports load.
"""

import sys


def main(argv: list[str]) -> int:
    sys.path.insert(0, argv[1])
    errors: list[tuple[str, str]] = []
    for wanted in argv[2:]:
        optional = wanted.startswith("?")
        name = wanted.lstrip("?")
        try:
            __import__(name)
        except ModuleNotFoundError as exc:
            if not (optional and exc.name == name):
                errors.append((name, f"{type(exc).__name__}: {exc}"))
        except Exception as exc:  # every failure is reported to the builder
            errors.append((name, f"{type(exc).__name__}: {exc}"))
    loaded = sorted(sys.modules.items())
    for name, module in loaded:
        spec = getattr(module, "__spec__", None)
        sys.stdout.write(f"{name}\t{getattr(spec, 'origin', None)}\n")
    for failed, message in errors:
        sys.stdout.write(f"!error\t{failed}\t{message}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
