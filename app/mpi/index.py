"""Who belongs to which master, as the index stands: the look-ups other parts of Qiao (exports, registries) make,
so that they need not know the index's tables."""

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import among
from app.mpi.tables import mpi_record


def sources(session: Session, master_ids: Iterable[str]) -> dict[str, str]:
    """Each source record of these masters → its master."""
    masters = list(set(master_ids))
    if not masters:
        return {}
    rows = session.execute(select(mpi_record.c.patient_id, mpi_record.c.master_id).where(among(session, mpi_record.c.master_id, masters)))
    return {patient_id: master_id for patient_id, master_id in rows}


def masters_of(session: Session, patient_ids: Iterable[str]) -> set[str]:
    """The masters these Patients are (masters) or belong to (sources)."""
    ids = set(patient_ids)
    if not ids:
        return set()
    masters = set()
    for patient_id, master_id in session.execute(
            select(mpi_record.c.patient_id, mpi_record.c.master_id).where(among(session, mpi_record.c.patient_id, ids))):
        masters.add(master_id)
        ids.discard(patient_id)
    if ids:
        masters |= set(session.scalars(select(mpi_record.c.master_id).where(among(session, mpi_record.c.master_id, ids)).distinct()))
    return masters


def masters_after(session: Session, after: str, limit: int) -> list[str]:
    """The next `limit` master ids after `after`, in id order (to walk every master in batches)."""
    return list(session.scalars(select(mpi_record.c.master_id).where(mpi_record.c.master_id > after)
                                .group_by(mpi_record.c.master_id).order_by(mpi_record.c.master_id).limit(limit)))
