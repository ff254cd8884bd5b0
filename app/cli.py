"""The `qiao` command: serve, migrate, client add, token, audit verify, ingest, messages, subscriptions, registries,
indicators, mpi, clock."""

import argparse
import logging
import multiprocessing
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from app import logging as qiao_logging
from app.config import get_settings
from app.endpoints import is_loopback

log = logging.getLogger("qiao")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qiao", description="Qiao FHIR middleware")
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help="migrate the database, then serve FHIR at /fhir")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=8080)
    serve_parser.add_argument("--workers", type=int, default=int(os.environ.get("QIAO_WORKERS", "1")))

    commands.add_parser("migrate", help="bring the database schema up to date")

    client_parser = commands.add_parser("client", help="manage SMART Backend Services clients")
    client_commands = client_parser.add_subparsers(dest="client_command", required=True)
    add_parser = client_commands.add_parser("add", help="register (or re-register) a client")
    add_parser.add_argument("client_id")
    add_parser.add_argument("--organization", required=True, help="the Organization it acts for: Organization/<id>")
    add_parser.add_argument("--scope", required=True, help="the scopes it may be granted, e.g. 'system/*.cruds'")
    keys = add_parser.add_mutually_exclusive_group(required=True)
    keys.add_argument("--jwks", type=Path, help="a file holding its public JWK Set")
    keys.add_argument("--jwks-url", help="where its public JWK Set is published (https)")
    add_parser.add_argument("--access", default="organization", choices=["organization", "all"],
                            help="organization: its own data and residents in its care (default); all: every resident")
    add_parser.add_argument("--break-glass", action="store_true", help="may ask for emergency (BTG) tokens")

    token_parser = commands.add_parser("token", help="print a short-lived bearer token for local use")
    token_parser.add_argument("--scope", required=True)
    token_parser.add_argument("--client", help="act as this registered client (default: the local operator, unrestricted)")
    token_parser.add_argument("--purpose", default="TREAT", help="purpose of use (v3 ActReason), e.g. BTG")

    audit_parser = commands.add_parser("audit", help="the audit trail")
    audit_commands = audit_parser.add_subparsers(dest="audit_command", required=True)
    audit_commands.add_parser("verify", help="seal pending events, then check the hash chain end to end")

    ingest_parser = commands.add_parser("ingest", help="ingest files from a source: HL7 v2 (one or more messages each), or "
                                                       "CSV / JSON / JSON Lines exports (.csv, .json, .jsonl: one message per row)")
    ingest_parser.add_argument("files", nargs="+", type=Path)
    ingest_parser.add_argument("--source", required=True, help="the source's name in the sources file")
    ingest_parser.add_argument("--kind", help="the kind of export (which mapping applies); default: the source's `files` pattern")

    messages_parser = commands.add_parser("messages", help="inbound messages (HL7 v2 …): list, replay")
    messages_commands = messages_parser.add_subparsers(dest="messages_command", required=True)
    list_parser = messages_commands.add_parser("list", help="list inbound messages, oldest first")
    list_parser.add_argument("--failed", action="store_true", help="only those that failed")
    list_parser.add_argument("--state", choices=["received", "processed", "failed", "duplicate"])
    list_parser.add_argument("--source")
    list_parser.add_argument("--limit", type=int, default=100)
    replay_parser = messages_commands.add_parser("replay", help="process stored messages again (after a fix)")
    replay_parser.add_argument("ids", nargs="+", type=int)

    subscriptions_parser = commands.add_parser("subscriptions", help="Subscriptions: delivery state, replay")
    subscriptions_commands = subscriptions_parser.add_subparsers(dest="subscriptions_command", required=True)
    subscriptions_commands.add_parser("list", help="each subscription: status, events raised, pending, failures, last error")
    resend_parser = subscriptions_commands.add_parser(
        "replay", help="send a subscription's delivered events again: all, or those every given option chooses")
    resend_parser.add_argument("subscription_id")
    resend_parser.add_argument("--since", help="the first event number")
    resend_parser.add_argument("--until", help="the last event number")
    resend_parser.add_argument("--type", action="append", default=[], help="the changed resource's type (repeatable)")
    resend_parser.add_argument("--focus", action="append", default=[], help="the changed resource, Type/id (repeatable)")
    resend_parser.add_argument("--since-time", help="raised at or after (FHIR date or time; local zone if none)")
    resend_parser.add_argument("--until-time", help="raised up to the end of (FHIR date or time)")

    registries_parser = commands.add_parser("registries", help="chronic-disease registries")
    registries_commands = registries_parser.add_subparsers(dest="registries_command", required=True)
    registries_commands.add_parser("rebuild", help="derive every resident's registry entries and the indicators' tables again from their records")

    mpi_parser = commands.add_parser("mpi", help="the master patient index: what a data steward reviews, merges and unmerges")
    mpi_commands = mpi_parser.add_subparsers(dest="mpi_command", required=True)
    review_parser = mpi_commands.add_parser("review", help="the review queue: list it, or decide one")
    review_parser.add_argument("review_id", nargs="?", type=int, help="decide this review (with --same or --different)")
    verdict = review_parser.add_mutually_exclusive_group()
    verdict.add_argument("--same", dest="decision", action="store_const", const="same", help="one resident: merge them")
    verdict.add_argument("--different", dest="decision", action="store_const", const="different", help="two people: never match them")
    review_parser.add_argument("--status", default="open", choices=["open", "same", "different", "obsolete"], help="the reviews listed")
    review_parser.add_argument("--note")
    merge_parser = mpi_commands.add_parser("merge", help="make two residents one: SOURCE's joins TARGET's (Patient ids)")
    merge_parser.add_argument("source")
    merge_parser.add_argument("target")
    merge_parser.add_argument("--note")
    mpi_commands.add_parser("rebuild", help="place every source Patient again with the current model (initial load, model change)")
    train_parser = mpi_commands.add_parser("train", help="estimate the match model from this district's records (then QIAO_MPI_MODEL and rebuild)")
    train_parser.add_argument("--out", type=Path, required=True, help="where to write the model (YAML)")
    train_parser.add_argument("--sample", type=int, default=200_000, help="records drawn at random to learn from")
    unmerge_parser = mpi_commands.add_parser("unmerge", help="these source records (Patient ids) become a resident of their own")
    unmerge_parser.add_argument("patients", nargs="+")
    unmerge_parser.add_argument("--note")

    commands.add_parser("clock", help="run once the work that falls due with time (a running server does every clock_seconds)")

    demo_parser = commands.add_parser("demo", help="write a synthetic community's feeds and play them through the adapters")
    demo_parser.add_argument("--out", type=Path, default=Path("demo-feeds"), help="where the feeds are written (default ./demo-feeds)")
    demo_parser.add_argument("--residents", type=int, default=30)

    indicators_parser = commands.add_parser("indicators", help="a year's quality indicators for a district, as a table")
    indicators_parser.add_argument("--year", type=int, required=True)
    indicators_parser.add_argument("--district", help="a GB/T 2260 county code (6 digits); default: every district")
    indicators_parser.add_argument("--csv", action="store_true", help="CSV instead of a table for the terminal")
    indicators_parser.add_argument("--chart", type=Path, help="also write an SVG chart of control rates per centre by quarter here")
    indicators_parser.add_argument("--programme", choices=("hypertension", "t2dm"), default="hypertension", help="the chart's control rate")

    args = parser.parse_args(argv)
    settings = get_settings()
    qiao_logging.configure(settings.log_level)
    if args.command == "serve":
        if not settings.auth and not is_loopback(args.host):
            print(f"qiao: refusing to serve on {args.host} with QIAO_AUTH=false: without authentication, serve on loopback only",
                  file=sys.stderr)
            return 2
        if args.workers > 1:  # in a child, so that alembic and the table models stay out of the supervisor (33 MiB)
            migration = multiprocessing.get_context("spawn").Process(target=migrate)
            migration.start()
            migration.join()
            if migration.exitcode != 0:
                return 1
        else:
            migrate()
        serve(args.host, args.port, args.workers)
        return 0
    migrate()
    if args.command == "client":
        return add_client(args)
    if args.command == "token":
        return token(args)
    if args.command == "audit":
        return verify_audit()
    if args.command == "ingest":
        return ingest(args.files, args.source, args.kind)
    if args.command == "messages":
        return list_messages(args) if args.messages_command == "list" else replay_messages(args.ids)
    if args.command == "subscriptions":
        return list_subscriptions() if args.subscriptions_command == "list" else replay_subscription(args)
    if args.command == "registries":
        return rebuild_registries()
    if args.command == "indicators":
        return indicator_table(args)
    if args.command == "clock":
        return run_clock()
    if args.command == "demo":
        return play_demo(args.out, args.residents)
    if args.command == "mpi":
        if args.mpi_command == "rebuild":
            return rebuild_index()
        if args.mpi_command == "train":
            return train_model(args.out, args.sample)
        return steward(args)
    return 0



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


def add_client(args: argparse.Namespace) -> int:
    from app import db
    from app.auth import clients
    from app.errors import QiaoError

    try:
        jwks = orjson.loads(args.jwks.read_bytes()) if args.jwks else None
        with db.transaction() as session:
            client = clients.add(session, args.client_id, organization=args.organization, scope=args.scope, jwks=jwks,
                                 jwks_url=args.jwks_url, access=args.access, break_glass=args.break_glass)
    except (OSError, orjson.JSONDecodeError, QiaoError) as error:
        print(f"qiao client add: {getattr(error, 'message', error)}", file=sys.stderr)
        return 2
    print(f"client {client.client_id} acts for Organization/{client.organization} with scopes {client.scope} (access {client.access})")
    return 0


def token(args: argparse.Namespace) -> int:
    from app import db
    from app.auth import clients, scopes, smart
    from app.auth.principal import PURPOSES, UNRESTRICTED
    from app.errors import QiaoError

    settings = get_settings()
    try:
        requested = scopes.parse(args.scope)
        if args.purpose not in PURPOSES:
            raise ValueError(f"--purpose must be one of {', '.join(sorted(PURPOSES))}")
        with db.transaction() as session:
            if args.client is None:
                issued = smart.mint(session, "operator", None, str(requested), access=UNRESTRICTED, purpose=args.purpose,
                                    lifetime=settings.token_lifetime)
            else:
                client = clients.get(session, args.client)
                if client is None:
                    raise ValueError(f"no client {args.client!r} is registered")
                granted = scopes.granted(requested, scopes.parse(client.scope))
                if not granted.grants:
                    raise ValueError(f"client {args.client} may have none of {args.scope}")
                issued = smart.mint(session, client.client_id, client.organization, str(granted), access=client.access,
                                    purpose=args.purpose, lifetime=settings.token_lifetime)
    except (QiaoError, ValueError) as error:
        print(f"qiao token: {getattr(error, 'message', error)}", file=sys.stderr)
        return 2
    print(issued)
    return 0


def verify_audit() -> int:
    from app import db
    from app.auth import audit_store

    audit_store.seal()
    with db.read_session() as session:
        result = audit_store.verify(session)
    print(f"sealed {result.sealed} pending {result.pending} head {result.head}")
    for problem in result.breaks:
        print(f"BROKEN {problem}")
    return 0 if result.intact else 1


def ingest(paths: list[Path], source_name: str, kind: str | None) -> int:
    from app.errors import QiaoError
    from app.ingest import files
    from app.ingest.sources import sources

    source = sources().get(source_name)
    if source is None:
        print(f"qiao ingest: unknown source {source_name!r} (configured: {', '.join(sorted(sources()))})", file=sys.stderr)
        return 2
    counts: dict[str, int] = {}
    for path in paths:
        try:
            tally = files.ingest(path.read_bytes(), file_name=path.name, source=source, channel="file", kind=kind)
        except QiaoError as error:
            print(f"qiao ingest: {path}: {error.message}", file=sys.stderr)
            return 2
        for state, count in tally.counts.items():
            counts[state] = counts.get(state, 0) + count
        for outcome in tally.failures:
            print(f"{outcome.message_id}\tfailed\t{outcome.location or ''}: {outcome.text}", file=sys.stderr)
    print(" ".join(f"{state} {count}" for state, count in sorted(counts.items())))
    return 1 if counts.get("failed") else 0


def list_messages(args: argparse.Namespace) -> int:
    from app import db
    from app.ingest import inbox

    with db.read_session() as session:
        messages = inbox.listing(session, state="failed" if args.failed else args.state, source=args.source, limit=args.limit)
    for message in messages:
        problem = message["error"]["issue"][0] if message["error"] else None
        where = ",".join(problem.get("expression", [])) if problem else ""
        print(f"{message['id']}\t{message['receivedAt']}\t{message['source']}\t{message['kind'] or '-'}\t{message['controlId'] or '-'}"
              f"\t{message['state']}" + (f"\t{where}: {problem['diagnostics']}" if problem else ""))
    return 0


def replay_messages(ids: list[int]) -> int:
    from app.errors import QiaoError
    from app.ingest import pipeline

    failures = 0
    for message_id in ids:
        try:
            outcome = pipeline.process(message_id)
        except QiaoError as error:
            print(f"{message_id}\t{error.message}", file=sys.stderr)
            failures += 1
            continue
        print(f"{message_id}\t{outcome.state}" + (f"\t{outcome.location or ''}: {outcome.text}" if outcome.state == "failed" else ""))
        failures += outcome.state == "failed"
    return 1 if failures else 0


def list_subscriptions() -> int:
    from app import db
    from app.subscriptions import service

    with db.read_session() as session:
        for row in service.overview(session):
            print(f"{row['subscription_id']}\t{row['org'] or '-'}\t{row['topic']}\t{row['status']}\tevents {row['events_count']}"
                  f"\tpending {row['pending']}\tfailures {row['failures']}" + (f"\t{row['last_error']}" if row["last_error"] else ""))
    return 0


def replay_subscription(args: argparse.Namespace) -> int:
    from app import db
    from app.errors import QiaoError
    from app.subscriptions import service

    named = {"eventsSinceNumber": [args.since], "eventsUntilNumber": [args.until], "resourceType": args.type, "focus": args.focus,
             "eventsSinceTime": [args.since_time], "eventsUntilTime": [args.until_time]}
    try:
        chosen = service.selection([(name, value) for name, values in named.items() for value in values if value is not None])
        with db.transaction() as session:
            replayed = service.replay(session, args.subscription_id, chosen)
    except QiaoError as error:
        print(f"qiao subscriptions replay: {error.message}", file=sys.stderr)
        return 2
    print(f"{args.subscription_id}\t{replayed.queued} events to send again, {replayed.pending} not yet delivered; a running server sends them")
    return 0


def rebuild_registries() -> int:
    from app.cdc import followups, registries

    seen, written = registries.rebuild()
    counted = followups.rebuild()
    print(f"residents {seen} entries-written {written} followups {counted}")
    return 0


def steward(args: argparse.Namespace) -> int:
    """What a data steward does, as the local operator (audited under that name)."""
    from app import db
    from app.auth.principal import SYSTEM
    from app.errors import QiaoError
    from app.mpi import service

    operator = replace(SYSTEM, client_id="operator")
    try:
        with db.transaction({"principal": operator}) as session:
            if args.mpi_command == "merge":
                print(_standing(service.merge(session, args.source, args.target, args.note)))
            elif args.mpi_command == "unmerge":
                print(_standing(service.unmerge(session, args.patients, args.note)))
            elif args.review_id is not None:
                if args.decision is None:
                    raise ValueError("say --same or --different")
                decided = service.decide(session, args.review_id, args.decision, args.note)
                print(f"{decided['id']}\t{decided['status']}\t{decided['patient']}\t{decided['master']}")
            else:
                for review in service.reviews(session, args.status):
                    comparisons = ", ".join(f"{name} {level}" for name, level in review["comparisons"].items())
                    print(f"{review['id']}\t{review['patient']}\t{review['master']}\t{review['probability']}\t{comparisons}"
                          + (f"\t{review['note']}" if review["note"] else ""))
    except (QiaoError, ValueError) as error:
        print(f"qiao mpi {args.mpi_command}: {getattr(error, 'message', error)}", file=sys.stderr)
        return 2
    return 0


def rebuild_index() -> int:
    from app.errors import Conflict
    from app.mpi import rebuild

    try:
        done = rebuild.rebuild()
    except Conflict as error:
        print(f"qiao mpi rebuild: {error.message}", file=sys.stderr)
        return 2
    timing = " ".join(f"{phase} {seconds:.1f}s" for phase, seconds in done.seconds.items())
    print(f"records {done.records} new {done.new_records} moved {done.moved} masters {done.masters} reviews {done.reviews}"
          f" deferred {done.deferred} ({timing})")
    return 0


def train_model(out: Path, sample: int) -> int:
    from app.mpi import training

    trained = training.train_on_district(sample)
    out.write_text(trained.to_yaml(), encoding="utf-8")
    print(f"model from {trained.trained_on['sampled']} of {trained.trained_on['district_records']} records written to {out}; "
          f"prior {trained.prior:.4f}; use it with QIAO_MPI_MODEL={out}, then qiao mpi rebuild")
    return 0


def _standing(result: dict[str, Any]) -> str:
    """The two masters a merge or unmerge changed, each with its records."""
    return f"{result['master']}\t{' '.join(result['records'])}\n{result['other']}\t{' '.join(result['otherRecords'])}"


def run_clock() -> int:
    from app import clock

    for name, changed in clock.run().items():
        print(f"{name}\t" + ("not run: another process holds it, or older writes are still open" if changed is None else f"changed {changed}"))
    return 0


def play_demo(out: Path, count: int) -> int:
    """The feeds through `ingest`, as an operator would play them, then what Qiao made of them."""
    from sqlalchemy import func, select

    from app import db, demo
    from app.mpi.tables import mpi_record, mpi_review
    from app.store.tables import resource

    try:
        people = demo.residents(count)
    except ValueError as error:
        print(f"qiao demo: {error}", file=sys.stderr)
        return 2
    failed = 0
    for source, path in demo.write_feeds(out, people):
        print(f"{path}  ({source})", end="  ", flush=True)
        failed += ingest([path], source, None)
    with db.transaction() as session:
        made: dict[str, int] = {row.res_type: row.n for row in session.execute(
            select(resource.c.res_type, func.count().label("n")).where(~resource.c.deleted).group_by(resource.c.res_type))}
        records = session.scalar(select(func.count()).select_from(mpi_record))
        masters = session.scalar(select(func.count(func.distinct(mpi_record.c.master_id))))
        review = session.scalar(select(func.count()).where(mpi_review.c.status == "open"))
    print(f"\n{records} source Patient records of {count} residents → {masters} master residents, {review} pairs for review")
    print(", ".join(f"{n} {t}" for t, n in sorted(made.items()) if t != "Patient"))
    print("\nNext: qiao serve, then (TOKEN=$(qiao token --scope 'system/*.rs')) for example\n"
          "  curl -H \"Authorization: Bearer $TOKEN\" http://127.0.0.1:8080/fhir/Group/hypertension-registry\n"
          "  curl -H \"Authorization: Bearer $TOKEN\" 'http://127.0.0.1:8080/fhir/EpisodeOfCare?type=urn:qiao:care-programme|family-doctor'")
    return 1 if failed else 0


def indicator_table(args: argparse.Namespace) -> int:
    """As the operator: every resident of the region (or the district) counts."""
    from app import db
    from app.auth.principal import SYSTEM
    from app.cdc import analyst, indicators
    from app.errors import QiaoError

    rules = indicators.Rules.configured()
    try:
        with db.transaction() as session:
            rows = analyst.table(session, SYSTEM, args.year, args.district, rules)
            chart = analyst.control_chart(session, SYSTEM, args.year, args.district, args.programme, rules) if args.chart else None
    except QiaoError as error:
        print(f"qiao indicators: {error.message}", file=sys.stderr)
        return 2
    sys.stdout.write(analyst.as_csv(rows) if args.csv else analyst.as_text(rows))
    if chart is not None:
        args.chart.write_bytes(chart)
        print(f"chart: {args.chart}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
