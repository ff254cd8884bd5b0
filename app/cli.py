"""The `qiao` command: serve, migrate."""

import argparse
import logging
import os
import sys

from app import logging as qiao_logging
from app.config import get_settings

log = logging.getLogger("qiao")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qiao", description="Qiao FHIR middleware")
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help="migrate the database, then serve FHIR at /fhir")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=8080)
    serve_parser.add_argument("--workers", type=int, default=int(os.environ.get("QIAO_WORKERS", "1")))

    commands.add_parser("migrate", help="bring the database schema up to date")

    args = parser.parse_args(argv)
    settings = get_settings()
    qiao_logging.configure(settings.log_level)
    if args.command == "migrate":
        migrate()
        return 0
    if args.command == "serve":
        migrate()
        serve(args.host, args.port, args.workers)
        return 0
    return 2


def migrate() -> None:
    from app import migrate as migrations
    from app.db import get_engine

    migrations.upgrade(get_engine())
    log.info("schema.up_to_date")


def serve(host: str, port: int, workers: int) -> None:
    from app import server

    settings = get_settings()
    if workers > 1 and settings.effective_database_url.startswith("sqlite"):
        log.warning("serve.sqlite_single_writer", extra=qiao_logging.fields(workers=workers))
    server.run(host, port, workers, settings.log_level)


if __name__ == "__main__":
    sys.exit(main())
