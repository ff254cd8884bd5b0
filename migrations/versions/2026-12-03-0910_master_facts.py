"""A master resident's policy facts kept as its own rows (app/mpi/facts.py): its sources' care relations and
consent denials, and each source's sender as a carer, filed under the master.

Revision ID: 0014_master_facts
Revises: 0013_mpi_deferred
Create Date: 2026-12-03 09:10:00
"""

from alembic import op

revision = "0014_master_facts"
down_revision = "0013_mpi_deferred"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("care_relation", "consent_denial"):
        op.execute(f"INSERT INTO {table} (resource_pk, patient_id, org_id) SELECT t.resource_pk, m.master_id, t.org_id"
                   f" FROM {table} t JOIN mpi_record m ON m.patient_id = t.patient_id")
    op.execute("INSERT INTO care_relation (resource_pk, patient_id, org_id) SELECT r.pk, m.master_id, m.org"
               " FROM mpi_record m JOIN resource r ON r.res_type = 'Patient' AND r.res_id = m.patient_id WHERE m.org IS NOT NULL")


def downgrade() -> None:
    for table in ("care_relation", "consent_denial"):
        op.execute(f"DELETE FROM {table} WHERE patient_id IN (SELECT DISTINCT master_id FROM mpi_record) AND EXISTS"
                   f" (SELECT 1 FROM resource r WHERE r.pk = {table}.resource_pk AND (r.patient IS NULL OR r.patient <> {table}.patient_id))")
