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

from sqlalchemy import bindparam, insert, select, text
from sqlalchemy.orm import Session

from app.auth.principal import Principal
from app.auth.relations import policy_data
from app.auth.tables import care_relation, consent_denial
from app.db import among
from app.mpi.tables import mpi_record
from app.store.rules import WriteRule


def mirror_written(session: Session, written: Sequence[Any], _principal: Principal) -> None:
    """The facts these writes made about source records, made about their masters too (one statement a table that
    one of the written types feeds)."""
    connection = session.connection()
    for table, types in ((care_relation, frozenset(policy_data()["care_relations"])), (consent_denial, frozenset({"Consent"}))):
        pks = [stored.pk for stored in written if not stored.deleted and stored.resource_type in types]
        if not pks:
            continue
        connection.execute(insert(table).from_select(
            ["resource_pk", "patient_id", "org_id"],
            select(table.c.resource_pk, mpi_record.c.master_id, table.c.org_id)
            .join(mpi_record, mpi_record.c.patient_id == table.c.patient_id)
            .where(among(connection, table.c.resource_pk, pks))))


def remirror(session: Session, masters: Iterable[str]) -> None:
    """The masters' facts made again from their records: what their sources' resources say, and each source's
    sender as a carer. Facts from resources about the master itself stay (a Task for Patient/{master})."""
    master_ids = sorted(set(masters))
    if not master_ids:
        return
    connection = session.connection()
    if connection.dialect.name == "postgresql":  # one round trip: every part reads the rows as they were before
        connection.execute(text(_REMIRROR), {"masters": master_ids})
        return
    for statement in _REMIRROR_STEPS:
        connection.execute(text(statement.replace("= ANY(:masters)", "IN :masters")).bindparams(bindparam("masters", expanding=True)),
                           {"masters": master_ids})


#: each master's mirrored rows: those whose resource is about someone else (one of its records)
_MIRRORED = "EXISTS (SELECT 1 FROM resource r WHERE r.pk = {t}.resource_pk AND (r.patient IS NULL OR r.patient <> {t}.patient_id))"
_REMIRROR_STEPS = [
    *(f"DELETE FROM {t} WHERE {t}.patient_id = ANY(:masters) AND {_MIRRORED.format(t=t)}" for t in ("care_relation", "consent_denial")),
    *(f"INSERT INTO {t} (resource_pk, patient_id, org_id) SELECT f.resource_pk, m.master_id, f.org_id FROM {t} f"
      f" JOIN mpi_record m ON m.patient_id = f.patient_id WHERE m.master_id = ANY(:masters)" for t in ("care_relation", "consent_denial")),
    "INSERT INTO care_relation (resource_pk, patient_id, org_id) SELECT r.pk, m.master_id, m.org FROM mpi_record m"
    " JOIN resource r ON r.res_type = 'Patient' AND r.res_id = m.patient_id WHERE m.master_id = ANY(:masters) AND m.org IS NOT NULL",
]
_REMIRROR = "WITH " + ", ".join(f"step{i} AS ({statement})" for i, statement in enumerate(_REMIRROR_STEPS[:-1])) + " " + _REMIRROR_STEPS[-1]


def _fact_types() -> frozenset[str]:
    return frozenset({*policy_data()["care_relations"], "Consent"})


RULE = WriteRule(_fact_types(), after=mirror_written)
