"""The `tracelab` command: a thin face over the library calls.

Each subcommand lives in its own module here and defines `register(subparsers)`, which adds
a parser whose `func(args)` runs it; modules are discovered, so adding one is one file.

    $ tracelab predict --prompt "The Eiffel Tower is located in the city of"
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracelab", description="Locate facts in language models with causal tracing, then edit them there."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args) or 0
    except (ValueError, TypeError, FileNotFoundError, ModuleNotFoundError, OSError) as error:
        print(f"tracelab {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
