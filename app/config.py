"""Settings from the environment (prefix QIAO_)."""

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QIAO_")

    data_dir: Path = Path("var")
    database_url: str = ""
    #: Timestamps that arrive without an offset are in this zone (Chinese systems send local time).
    timezone: str = "Asia/Shanghai"
    #: Public base URL used in Location headers, fullUrl and paging links; derived from the request when empty.
    base_url: str = ""
    max_body_bytes: int = 16 * 1024 * 1024
    default_page_size: int = 20
    max_page_size: int = 1000
    #: Largest batch or transaction Bundle accepted, in entries.
    max_bundle_entries: int = 10_000
    #: Threads per worker for the (sync) handlers; 0 means 2 per CPU core. Few threads keep the tail short: with
    #: anyio's default of 40, p99 tripled under load as threads queued for the GIL (tests/benchmarks/README.md).
    threads: int = 0
    #: PostgreSQL connections per worker and per pool (writes, reads), plus half as many overflow.
    db_pool_size: int = 10
    log_level: str = "INFO"
    #: Require SMART Backend Services bearer tokens. Off only for local experiments: `qiao serve` then refuses any
    #: address but loopback.
    auth: bool = True
    #: Lifetime of the bearer tokens the token endpoint issues, in seconds (SMART: at most 300).
    token_lifetime: int = 300
    #: Origins allowed to call from a browser (comma-separated); empty: CORS closed.
    cors_origins: str = ""
    #: How often queued read audits are written (seconds); the most a hard crash can lose.
    audit_flush_seconds: float = 0.5
    #: Mappings (one folder per adapter) and code tables (codes/); the repository's own by default.
    mappings_dir: Path = Path(__file__).resolve().parents[1] / "mappings"
    #: The source systems (HIS, public health, contracts): their Organization, character set, identifier systems.
    sources_file: Path = Path(__file__).resolve().parents[1] / "mappings" / "sources.yaml"
    #: HL7 v2 over MLLP, served by every `qiao serve` worker; port 0 turns the listener off.
    mllp_host: str = "127.0.0.1"
    mllp_port: int = 2575
    #: At most this many messages that arrived together (over all connections) are applied in one transaction.
    mllp_batch: int = 64
    #: Resident matching: the trained model (m/u per comparison level; `qiao mpi train` writes one).
    mpi_model: Path = Path(__file__).resolve().parent / "mpi" / "model.yaml"
    #: Match every source Patient as it is written. Off for a district's initial load: the Patients wait, unindexed,
    #: until `qiao mpi rebuild` places them all at batch speed.
    mpi_online: bool = True
    #: Match probability from which a new record joins a master without review (overrides the model's).
    mpi_link_threshold: float | None = None
    #: Match probability from which a pair goes to the review queue (overrides the model's).
    mpi_review_threshold: float | None = None
    #: The least number of residents term frequencies are counted against, so that a small or new index does not
    #: take every name for a common one.
    mpi_min_population: int = 10_000
    #: Days the community has to follow up an upward referral (基本公卫: 2周内主动随访转诊情况).
    referral_followup_days: int = 14
    #: Days the family doctor has to follow up a resident referred back down by the hospital.
    referral_downward_followup_days: int = 14
    #: Service levels of a sent referral: hours within which the receiver must receive it and accept it, else an
    #: escalation is raised (app/referrals/escalations.py); 0 turns one off. Set when the referral is sent.
    escalate_not_received_hours: float = 24
    escalate_not_accepted_hours: float = 72
    #: Days back a public-health follow-up may date from and still draft a referral under the national rules (two
    #: uncontrolled follow-ups in a row, or a danger sign: app/referrals/drafts.py); older ones are history being
    #: loaded. 0 turns drafting off.
    referral_draft_days: int = 14
    #: How often each server process looks for notifications to deliver (seconds); its own writes wake it at once.
    subscription_poll_seconds: float = 0.2
    #: Deliveries each server process makes at the same time (to different subscriptions); a slow endpoint holds one.
    subscription_delivery_threads: int = 16
    #: Failed deliveries in a row after which a Subscription shows status `error` (retries go on).
    subscription_error_after: int = 3
    #: The longest wait between retries of a failing delivery (seconds).
    subscription_max_backoff: int = 300
    #: How long a process holds a subscription it is delivering to (seconds): one that dies mid-delivery delays that
    #: subscription this long. Each POST waits for the endpoint under half of it (minus 5 s), so that a live delivery
    #: never outlasts its lease; the default leaves a Subscription's longest timeout (60 s) whole.
    subscription_lease_seconds: float = 130
    #: How often each server process runs the work that falls due with time (app/clock.py: registry entries whose
    #: enrolment started or ended, referral deadlines that passed), in seconds; `qiao clock` runs it once, e.g. from cron.
    clock_seconds: float = 300
    #: Bulk Data export: how often each server process looks for an export to run (seconds).
    bulk_poll_seconds: float = 0.5
    #: The Retry-After (seconds) an export's status answer asks for; polling twice as often is answered 429.
    bulk_retry_after_seconds: int = 2
    #: Exports one client may have queued or running at once; one more is refused with 429.
    bulk_max_jobs_per_client: int = 3
    #: Hours an export's files are kept after it completes (the manifest's Expires).
    bulk_retention_hours: int = 24
    #: Resources per ndjson file; a type with more is split into several files.
    bulk_file_resources: int = 100_000
    #: Resources read per query while exporting.
    bulk_batch_size: int = 2_000
    #: The longest an export waits for write transactions older than it to end before fixing its transactionTime.
    bulk_settle_seconds: float = 30.0

    #: Quality indicators (DOMAIN §5, open points of the national text): a managed resident without a reading in the
    #: period (失访) counts as not controlled; off: left out of the control rate's denominator.
    indicator_lost_is_uncontrolled: bool = True
    #: Blood pressure of residents aged 65 and over is controlled below 150/90 (else 140/90 for everyone).
    indicator_elderly_bp: bool = True
    #: The follow-up whose reading decides control: `with-reading` (the latest that has one) or `any` (the latest).
    indicator_latest: Literal["with-reading", "any"] = "with-reading"
    #: Face-to-face follow-ups a year that make management standard (规范管理); pro rata for other periods.
    indicator_face_to_face_per_year: int = 4

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'qiao.sqlite3').resolve()}"

    @property
    def handler_threads(self) -> int:
        return self.threads or 2 * (os.cpu_count() or 1)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@lru_cache
def get_settings() -> Settings:
    return Settings()
