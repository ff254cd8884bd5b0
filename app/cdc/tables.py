"""The indicators' narrow tables, kept in the same transaction as the writes they are derived from, so that
`$evaluate-measure` reads two range scans instead of the search index and the resources' JSON.

`registry_span`: one row per enrolment of a registry member (the enrolment's period cut at death; none while the
diagnosis is missing), with what the indicators count it under: the enrolling centre, the resident's home district
(the fallback when the centre has none) and the master's birth date. Rewritten with the member's registry entries.

`indicator_followup`: one row per public-health follow-up Encounter that took place (population.py states the data
contract), with its readings' values merged. Rewritten whenever the Encounter or an Observation of it is written.
Both are derived data: `qiao registries rebuild` writes them again from the resources.
"""

from sqlalchemy import BigInteger, Boolean, Column, Float, Index, String, Table

from app.db import metadata
from app.store.tables import PrimaryKey

registry_span = Table(
    "registry_span",
    metadata,
    Column("registry", String(64), nullable=False),
    Column("master_id", String(64), nullable=False, index=True),
    Column("entry_id", String(64), nullable=False),  # the registry entry (EpisodeOfCare), for the access policy
    Column("since", BigInteger, nullable=False),  # microseconds since the epoch, as in search_date
    Column("until", BigInteger, nullable=True),  # None: open
    Column("organization", String(64), nullable=True),
    Column("home_district", String(6), nullable=True),
    Column("birth_date", String(10), nullable=True),  # YYYY-MM-DD
    Index(None, "registry", "since"),
    Index(None, "registry", "until"),  # the clock's registries pass: enrolments that ended
)

indicator_followup = Table(
    "indicator_followup",
    metadata,
    Column("encounter_pk", PrimaryKey, primary_key=True, autoincrement=False),
    Column("encounter_id", String(64), nullable=False),
    Column("patient_id", String(64), nullable=True),  # the source record; the master is looked up when counting
    Column("programme", String(32), nullable=False),
    Column("at", BigInteger, nullable=False),
    Column("face_to_face", Boolean, nullable=False),
    Column("has_reading", Boolean, nullable=False),
    Column("systolic", Float, nullable=True),
    Column("diastolic", Float, nullable=True),
    Column("glucose", Float, nullable=True),  # mmol/L
    Index(None, "programme", "at"),
    Index(None, "patient_id", "programme", "at"),  # a record's previous follow-up (app/referrals/drafts.py)
)
