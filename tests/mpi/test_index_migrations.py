"""Migrations that re-key the master patient index in SQL make the keys `linker.blocking_keys` makes in Python."""

import orjson
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from app import migrate
from app.mpi.features import Features
from app.mpi.linker import blocking_keys
from app.mpi.tables import mpi_block, mpi_record
from tests.mpi.test_matching import CHC_MRN, HOSPITAL_MRN, id_number, post, resident


def _keys(engine: Engine, prefix: str) -> tuple[set[tuple[int, str]], set[tuple[int, str]]]:
    """(the index's keys with this prefix, the keys its records' features make now) as (record, key) pairs."""
    with engine.connect() as connection:
        stored = {(pk, key) for key, pk in connection.execute(select(mpi_block.c.key, mpi_block.c.record_pk)
                                                               .where(mpi_block.c.key.like(f"{prefix}%")))}
        made = {(pk, key) for pk, features in connection.execute(select(mpi_record.c.pk, mpi_record.c.features))
                for key in blocking_keys(Features.from_json(orjson.loads(features))) if key.startswith(prefix)}
    return stored, made


def test_the_id_half_keys_are_made_again_with_the_name(client: TestClient, app_engine: Engine) -> None:
    # names whose sound folds (zh → z, -ng → -n), one in pinyin, a compound surname; one without an ID number
    for i, (family, given, born) in enumerate([("张", "建中", "1955-01-02"), ("ZHANG", "JIANZHONG", "1955-01-02"),
                                               ("欧阳", "翠花", "1972-02-14"), ("陈", "明", "1990-07-01")]):
        post(client, resident(family, given, born, number=id_number(born, 11 + 2 * i) if i < 3 else None,
                              mrn=(HOSPITAL_MRN if i % 2 else CHC_MRN, f"M{i}"), phone=f"1391111{i:04d}"))
    stored, made = _keys(app_engine, "ih:")
    assert stored == made and len(made) == 3
    config = migrate.alembic_config()
    try:
        with app_engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0018_mpi_census")
        assert _keys(app_engine, "ih:")[0] == set()
    finally:
        migrate.upgrade(app_engine)
    assert _keys(app_engine, "ih:") == (made, made)
