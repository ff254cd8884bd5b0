"""A master resident's access-policy facts are its sources': an organization that sent a source record, or cares
for one, cares for the master, and a Consent on any source denies it. They are kept as the master's own rows of
`care_relation` and `consent_denial` (each under the resource it comes from), so the policy reads one indexed row
per fact for a master as for anyone, instead of walking the master's records on every read.

Kept in two places: a write that makes facts about a source record mirrors them onto its master (`mirror_written`,
a write rule), and a master rewritten because its records changed gets them all again (`remirror`, from
golden.refresh): a record that joins or leaves a master takes its facts with it.
"""

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import and_, delete, insert, literal, select
from sqlalchemy.orm import Session

from app.auth.principal import Principal
from app.auth.relations import policy_data
from app.auth.tables import care_relation, consent_denial
from app.db import among
from app.mpi.tables import mpi_record
from app.store.rules import WriteRule
from app.store.tables import resource

FACTS = (care_relation, consent_denial)


def mirror_written(session: Session, written: Sequence[Any], _principal: Principal) -> None:
    """The facts these writes made about source records, made about their masters too (one statement a table)."""
    pks = [stored.pk for stored in written if not stored.deleted]
    if not pks:
        return
    connection = session.connection()
    for table in FACTS:
        connection.execute(insert(table).from_select(
            ["resource_pk", "patient_id", "org_id"],
            select(table.c.resource_pk, mpi_record.c.master_id, table.c.org_id)
            .join(mpi_record, mpi_record.c.patient_id == table.c.patient_id)
            .where(among(connection, table.c.resource_pk, pks))))


def remirror(session: Session, masters: Iterable[str]) -> None:
    """The masters' facts made again from their records: what their sources' resources say, and each source's
    sender as a carer. The masters' own rows (from their own content) stay."""
    master_ids = sorted(set(masters))
    if not master_ids:
        return
    connection = session.connection()
    own = select(resource.c.pk).where(resource.c.res_type == "Patient", among(connection, resource.c.res_id, master_ids))
    for table in FACTS:
        connection.execute(delete(table).where(among(connection, table.c.patient_id, master_ids), table.c.resource_pk.not_in(own)))
        connection.execute(insert(table).from_select(
            ["resource_pk", "patient_id", "org_id"],
            select(table.c.resource_pk, mpi_record.c.master_id, table.c.org_id)
            .join(mpi_record, mpi_record.c.patient_id == table.c.patient_id)
            .where(among(connection, mpi_record.c.master_id, master_ids))))
    connection.execute(insert(care_relation).from_select(  # the organization that sent a record cares for its master
        ["resource_pk", "patient_id", "org_id"],
        select(resource.c.pk, mpi_record.c.master_id, mpi_record.c.org)
        .join(resource, and_(resource.c.res_type == literal("Patient"), resource.c.res_id == mpi_record.c.patient_id))
        .where(among(connection, mpi_record.c.master_id, master_ids), mpi_record.c.org.is_not(None))))


def _fact_types() -> frozenset[str]:
    return frozenset({*policy_data()["care_relations"], "Consent"})


RULE = WriteRule(_fact_types(), after=mirror_written)
