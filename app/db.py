"""Engine and sessions for SQLite (embedded default) and PostgreSQL (production).

One unit of work per request: the session dependency commits once after the handler returns and rolls back on
any exception. Services flush when they need database-generated values; they never commit.
"""

import hashlib
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from functools import cache
from typing import Any

from psycopg.types.array import ListBinaryDumper
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    MetaData,
    Table,
    TextClause,
    any_,
    bindparam,
    create_engine,
    delete,
    event,
    insert,
    literal_column,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings, get_settings

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING_CONVENTION)


def normalise_url(url: str) -> str:
    """Use psycopg 3 for plain postgresql:// URLs."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def make_engine(url: str, *, pool_size: int = 10, autocommit: bool = False) -> Engine:
    """An engine; with `autocommit`, its connections stay in autocommit mode (reads: nothing to reset on return)."""
    url = normalise_url(url)
    options: dict[str, Any] = {"isolation_level": "AUTOCOMMIT", "pool_reset_on_return": None} if autocommit else {}
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **options)
        _configure_sqlite(engine)
        return engine
    # no pool_pre_ping: it costs a round trip per request; stale connections are recycled instead.
    # Plans are PostgreSQL's own choice (plan_cache_mode auto): a prepared search reuses its generic plan, while
    # forcing custom plans re-planned every statement, 0.7-1.3 ms of PostgreSQL CPU per identifier search (bind
    # durations in the server log, 2026-12-03), more than the search itself. A generic plan made while a table was
    # nearly empty is replaced when autovacuum analyses the table; a database without autovacuum must be analysed
    # by hand as it grows (the benchmarks do: tests/benchmarks/common.py, `analysing`).
    engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size // 2, pool_recycle=1800, **options)

    @event.listens_for(engine, "connect")
    def _binary_arrays(dbapi_connection: Any, _record: Any) -> None:
        """Lists go as binary arrays: psycopg's text format escapes every quote of every element by a regular
        expression whose replacement is expanded in Python, and a write's versions and index rows go as arrays of
        JSON (`write_rows`). An audit flush of 70 accesses took 8.7-14.9 ms of CPU, 7.3-9.6 ms with binary arrays,
        and the request threads wait for the GIL meanwhile: $match at 1M residents, p99 29 → 19 ms."""
        dbapi_connection.adapters.register_dumper(list, ListBinaryDumper)

    return engine


def _configure_sqlite(engine: Engine) -> None:
    """WAL, foreign keys, and real BEGIN statements (the pysqlite SAVEPOINT recipe from SQLAlchemy's docs).

    Write transactions begin IMMEDIATE: they take SQLite's one write lock up front (waiting up to busy_timeout),
    because a WAL transaction that read first and writes later fails at once with "database is locked" if another
    connection committed in between. Reads use the autocommit engine and never wait.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=30000"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        if connection.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            connection.exec_driver_sql("BEGIN IMMEDIATE")


_engine: Engine | None = None
_read_engine: Engine | None = None
_session_factory: sessionmaker[Session] | None = None
_read_session_factory: sessionmaker[Session] | None = None


def get_engine(settings: Settings | None = None) -> Engine:
    if _engine is None:
        settings = settings or get_settings()
        if settings.effective_database_url.startswith("sqlite"):
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        set_engine(make_engine(settings.effective_database_url, pool_size=settings.db_pool_size))
    assert _engine is not None
    return _engine


def set_engine(engine: Engine) -> None:
    """Point the application at an engine (at start-up; tests and benchmarks pass their own).

    Reads get a second engine on the same database whose connections are always in autocommit mode: sharing one
    pool and switching the mode per checkout cost a reset on every request.
    """
    global _engine, _read_engine, _session_factory, _read_session_factory
    if _read_engine is not None:
        _read_engine.dispose()
    _engine = engine
    pool_size = engine.pool.size() if hasattr(engine.pool, "size") else 5
    _read_engine = make_engine(engine.url.render_as_string(hide_password=False), pool_size=pool_size, autocommit=True)
    _session_factory = sessionmaker(engine, expire_on_commit=False)
    _read_session_factory = sessionmaker(_read_engine, expire_on_commit=False)


def new_session() -> Session:
    get_engine()
    assert _session_factory is not None
    return _session_factory()


@contextmanager
def transaction(info: dict[str, Any] | None = None) -> Iterator[Session]:
    """The one commit point of a unit of work: commit when the block ends, roll back on any exception.

    `info` goes to `session.info` (the principal the work runs for, app/auth/policy.py).
    """
    session = new_session()
    session.info.update(info or {})
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def read_session(info: dict[str, Any] | None = None) -> Iterator[Session]:
    """Reads without BEGIN/COMMIT (autocommit): one round trip per query on the hot read and search paths."""
    get_engine()
    assert _read_session_factory is not None
    session = _read_session_factory()
    session.info.update(info or {})
    try:
        yield session
    finally:
        session.close()


def lock_key(session: Session, key: str) -> None:
    """Serialise transactions that use the same key until they commit (conditional create/update).

    SQLite needs nothing: a write transaction holds the database's one write lock from its BEGIN.
    """
    lock_keys(session, [key])


def lock_keys(session: Session, keys: Iterable[str]) -> None:
    """Lock several keys in one round trip, always in the same order, so that two transactions locking overlapping
    sets wait for each other instead of deadlocking."""
    if session.get_bind().dialect.name != "postgresql":
        return
    numbers = sorted({advisory_key(key) for key in keys})
    if numbers:
        # unnest yields the array in order, and the aggregate takes each lock as the row arrives
        session.execute(text("SELECT count(pg_advisory_xact_lock(k)) FROM unnest(CAST(:ks AS bigint[])) AS k"), {"ks": numbers})


def advisory_key(key: str) -> int:
    """The PostgreSQL advisory lock number of a key (a signed 64-bit digest)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)


def wait_for_writers(started: datetime, timeout: float) -> bool:
    """Wait until every write transaction that began before `started` has ended (committed or not); False if some
    were still open after `timeout` seconds. A point-in-time read (a bulk export) then sees every change whose
    transaction began before it. SQLite: taking its one write lock is that wait."""
    if get_engine().dialect.name != "postgresql":
        with transaction() as session:
            session.execute(text("SELECT 1"))
        return True
    deadline = time.monotonic() + timeout
    with read_session() as session:
        while True:
            open_ = session.scalar(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND backend_type = 'client backend' AND state <> 'idle' AND xact_start < :started"), {"started": started})
            if not open_:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)


def among(bind: Connection | Session, column: ColumnElement[Any], values: Iterable[Any]) -> ColumnElement[bool]:
    """`column IN values`, on PostgreSQL as one array parameter (`= ANY(:values)`): psycopg parses every statement
    longer than a few kilobytes in Python, and an IN list of thousands of ids costs more to send than to run. One
    statement text for every length is prepared once and may get a generic plan, so a table filled in bulk needs
    fresh statistics (`ANALYZE`) before it is searched this way."""
    values = list(values)
    dialect = bind.dialect if isinstance(bind, Connection) else bind.get_bind().dialect
    if dialect.name != "postgresql":
        return column.in_(values)
    return column == any_(bindparam(None, values, type_=_array_of(column.type)))


@cache
def _array_of(item: Any) -> Any:
    """One ARRAY type per element type: SQLAlchemy works a type's cache key out once per instance, and a new one per
    statement cost an MLLP worker 2.5% of its time (py-spy), in the duplicate check of each batch."""
    return postgresql.ARRAY(item)


def insert_unless_present(session: Session, table: Table, values: dict[str, Any]) -> None:
    """Insert a row unless one with its key exists (two processes may both try: neither fails)."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    session.execute(dialect.insert(table).values(**values).on_conflict_do_nothing())


def insert_returning_keys(session: Session, table: Table, rows: list[dict[str, Any]]) -> list[int]:
    """Insert rows; their new primary keys, in the rows' order. On PostgreSQL one short statement whatever the
    number of rows (one array per column, unnested in order): a multi-row VALUES list of a few hundred rows costs
    psycopg more to parse, in Python, than PostgreSQL to run. Keys come from the table's sequence in insertion
    order, so sorted they are the rows' keys."""
    if not rows:
        return []
    connection = session.connection()
    key = next(iter(table.primary_key.columns))
    if connection.dialect.name != "postgresql":
        result = connection.execute(insert(table).returning(key, sort_by_parameter_order=True), rows)
        return [int(k) for k in result.scalars()]
    names = list(rows[0])
    statement = text(f"INSERT INTO {table.name} ({', '.join(names)}) SELECT {', '.join(names)} FROM {_unnest(connection, table, names)}"
                     f" WITH ORDINALITY AS given({', '.join(names)}, position) ORDER BY position RETURNING {key.name}")
    keys = connection.execute(statement, {n: [row[n] for row in rows] for n in names}).scalars().all()
    return sorted(int(k) for k in keys)


def bulk_insert(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert many rows in the session's transaction: COPY on PostgreSQL (several times executemany's rate)."""
    if not rows:
        return
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        session.execute(insert(table), rows)
        return
    columns = list(rows[0])
    driver_connection = connection.connection.driver_connection
    with driver_connection.cursor() as cursor:  # type: ignore[union-attr]
        with cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([row[c] for c in columns])


#: Up to this many rows in all, `write_rows` sends them to PostgreSQL in one statement; more go by COPY, table by
#: table, whose rate is higher once the two round trips each COPY costs are spread over enough rows.
ONE_STATEMENT_ROWS = 500
_one_statements: dict[tuple[Any, ...], TextClause] = {}


def write_rows(session: Session, rows: dict[Table, list[dict[str, Any]]], *, replacing: Sequence[Table] = (),
               of: Sequence[int] = ()) -> None:
    """Insert rows into several tables, after deleting the rows of `replacing` whose resource_pk is among `of` (the
    derived rows of resources being rewritten). A single write (one Patient and its master, say) has rows for half a
    dozen tables: on PostgreSQL they go as one statement of data-modifying WITH clauses, one array per column, instead
    of a DELETE and a COPY per table (at 1M residents COPY was a quarter of a matched Patient write's time; in one
    statement its p50 fell 7%).
    All clauses see the same snapshot, so a delete never removes a row inserted beside it; the tables it is used for
    have no unique key for a deleted row and its new copy to collide on."""
    rows = {table: table_rows for table, table_rows in rows.items() if table_rows}
    replacing = replacing if of else ()
    if not rows and not replacing:
        return
    connection = session.connection()
    if connection.dialect.name != "postgresql" or sum(map(len, rows.values())) > ONE_STATEMENT_ROWS:
        for table in replacing:
            connection.execute(delete(table).where(among(connection, table.c.resource_pk, of)))
        for table, table_rows in rows.items():
            bulk_insert(session, table, table_rows)
        return
    shape = (tuple(table.name for table in replacing), tuple((table.name, tuple(table_rows[0])) for table, table_rows in rows.items()))
    statement = _one_statements.get(shape)
    if statement is None:
        statement = _one_statements[shape] = _one_statement(connection, replacing, {table: list(r[0]) for table, r in rows.items()})
    params: dict[str, Any] = {"of": list(of)} if replacing else {}
    for i, table_rows in enumerate(rows.values()):
        params.update({f"t{i}_{name}": [row[name] for row in table_rows] for name in table_rows[0]})
    connection.execute(statement, params)


def _one_statement(connection: Connection, replacing: Sequence[Table], columns: dict[Table, list[str]]) -> TextClause:
    clauses = [f"d{i} AS (DELETE FROM {table.name} WHERE resource_pk = ANY(CAST(:of AS BIGINT[])))" for i, table in enumerate(replacing)]
    for i, (table, names) in enumerate(columns.items()):
        values = ", ".join(_bound(connection, table.c[name].type, name) for name in names)
        clauses.append(f"i{i} AS (INSERT INTO {table.name} ({', '.join(names)}) SELECT {values}"
                       f" FROM {_unnest(connection, table, names, prefix=f't{i}_')} AS given({', '.join(names)}))")
    return text(f"WITH {', '.join(clauses)} SELECT 1")


def _unnest(connection: Connection, table: Table, names: list[str], prefix: str = "") -> str:
    """unnest() of one array parameter per column (`:{prefix}{name}`), each cast to an array of its column's type."""
    arrays = ", ".join(f"CAST(:{prefix}{name} AS {table.c[name].type.compile(dialect=connection.dialect)}[])" for name in names)
    return f"unnest({arrays})"


def _bound(connection: Connection, column_type: Any, name: str) -> str:
    """A column's value as its type binds it (JsonText: text cast to JSONB), or as given."""
    expression = column_type.bind_expression(literal_column(name))
    return name if expression is None else str(expression.compile(dialect=connection.dialect))
