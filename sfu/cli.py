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

    from .auth import add_token_arguments
    from .history import add_history_arguments

    add_token_arguments(sub.add_parser("token", help="mint an access token (JWT) for a room"))
    add_history_arguments(sub.add_parser("history", help="list, show or export meeting history"))
    from .audit import add_audit_arguments

    add_audit_arguments(sub.add_parser("audit", help="who read, exported or deleted personal history (admins)"))

    args = parser.parse_args(argv)
    if args.command == "serve":
        from .history import StoreUnavailable
        from .server import run
        from .tls import TlsConfigError

        cfg = config.from_args(args)
        try:
            return run(cfg)
        except StoreUnavailable as exc:
            return _store_unavailable(exc)
        except TlsConfigError as exc:
            return _tls_unusable(exc)
    if args.command == "token":
        from .auth import keyring_from_config, token_command

        return token_command(args, keyring_from_config(config.from_args(args)))
    if args.command == "history":
        from .history import history_command

        cfg = config.from_args(args)
        return history_command(args, cfg.db, cfg.data_dir)
    if args.command == "audit":
        from .audit import audit_command

        cfg = config.from_args(args)
        return audit_command(args, cfg.db, cfg.data_dir)
    parser.error(f"unknown command {args.command}")
    return 2


def _store_unavailable(exc) -> int:
    """One JSON log line and one plain line on stderr instead of a traceback."""
    import logging

    from . import log
    from .history import EXIT_STORE_UNAVAILABLE

    log.event(logging.getLogger("sfu.server"), "history database unavailable", logging.ERROR,
              database=exc.where, problem=exc.problem, advice=exc.advice, exit_code=EXIT_STORE_UNAVAILABLE)
    print(f"sfu serve: {exc}", file=sys.stderr, flush=True)
    return EXIT_STORE_UNAVAILABLE


def _tls_unusable(exc) -> int:
    """Like _store_unavailable: one JSON log line, one plain line, exit code EXIT_TLS."""
    import logging

    from . import log
    from .tls import EXIT_TLS

    log.event(logging.getLogger("sfu.server"), "tls settings unusable", logging.ERROR,
              where=exc.where, problem=exc.problem, advice=exc.advice, exit_code=EXIT_TLS)
    print(f"sfu serve: {exc}", file=sys.stderr, flush=True)
    return EXIT_TLS


if __name__ == "__main__":
    sys.exit(main())
