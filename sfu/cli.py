"""The ``sfu`` command line."""

from __future__ import annotations

import argparse
import sys

from . import __version__, config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sfu", description="WebRTC selective forwarding unit")
    parser.add_argument("--version", action="version", version=f"sfu {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the SFU (HTTP signaling + media)")
    config.add_serve_arguments(serve)

    args = parser.parse_args(argv)
    if args.command == "serve":
        from .server import run

        return run(config.from_args(args))
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
