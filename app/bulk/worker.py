"""What each server process does for Bulk Data exports at every poll (app/periodic.py): claims a queued job (or
one whose process died), runs it, and now and then deletes the files of expired, cancelled and failed exports."""

import threading
import time

from app import db
from app.bulk import export, jobs

EXPIRE_EVERY_SECONDS = 600


class Worker:
    """Run by app.periodic every `bulk_poll_seconds` in each server process."""

    def __init__(self) -> None:
        self._expired_at = 0.0

    def run_once(self, stopping: threading.Event | None = None) -> bool:
        """Run one job if one is waiting; returns whether one was. `stopping` set: hand the job back after the
        batch in hand (the next process resumes it)."""
        if time.monotonic() - self._expired_at > EXPIRE_EVERY_SECONDS:
            with db.transaction() as session:
                jobs.expire(session)
            self._expired_at = time.monotonic()
        with db.transaction() as session:
            job_id = jobs.claim(session)
        if job_id is None:
            return False
        export.run(job_id, stopping=stopping)
        return True
