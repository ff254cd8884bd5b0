"""The blocking key of an ID number's first half (region and birth decade) goes with the whole name's sound instead
of the surname (app/mpi/linker.py `blocking_keys`): at 1M residents those blocks held 86 records at the median and
were most of a record's candidates. The index's `ih:` keys are made again in SQL from each record's stored features,
so that no rebuild is needed. Features stored before the name sound (2026-11-24) fall back to the pinyin: such an
index was to be rebuilt since in any case.

Revision ID: 0019_mpi_id_half_with_name
Revises: 0018_mpi_census
Create Date: 2026-12-03 10:00:00
"""

from alembic import op

revision = "0019_mpi_id_half_with_name"
down_revision = "0018_mpi_census"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        number = "CAST(features AS jsonb)->>'id_number'"
        name = "COALESCE(CAST(features AS jsonb)->'name'->>'sound', CAST(features AS jsonb)->'name'->>'pinyin')"
    else:
        number = "json_extract(features, '$.id_number')"
        name = "COALESCE(json_extract(features, '$.name.sound'), json_extract(features, '$.name.pinyin'))"
    op.execute("DELETE FROM mpi_block WHERE key LIKE 'ih:%'")
    op.execute(f"INSERT INTO mpi_block (key, record_pk) SELECT 'ih:' || substr({number}, 1, 9) || ':' || {name}, pk"
               f" FROM mpi_record WHERE length({number}) = 18 AND {name} IS NOT NULL")


def downgrade() -> None:
    # the surname's sound is not stored: the old keys come back with `qiao mpi rebuild`; until then a record whose
    # ID number has a typo in its second half is found by its other keys
    op.execute("DELETE FROM mpi_block WHERE key LIKE 'ih:%'")
