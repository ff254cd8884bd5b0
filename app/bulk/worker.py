"""A thread per server process that runs Bulk Data exports: claims a queued job (or one whose process died), runs
it, and now and then deletes the files of expired, cancelled and failed exports."""

import logging
import threading
import time

from app import db
from app.bulk import export, jobs
from app.config import get_settings
from app.logging import fields

log = logging.getLogger("qiao.bulk")
EXPIRE_EVERY_SECONDS = 600


class Worker:
    def __init__(self) -> None:
        self._poll = get_settings().bulk_poll_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="qiao-bulk", daemon=True)
        self._expired_at = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop after the batch in hand; a job left running is resumed by the next process (its lease runs out)."""
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self._poll):
            try:
                self.run_once()
            except Exception as error:  # noqa: BLE001 - keep serving; the job's row keeps its state
                log.error("bulk.worker_failed", exc_info=error, extra=fields(error=type(error).__name__))

    def run_once(self) -> bool:
        """Run one job if one is waiting; returns whether one was."""
        if time.monotonic() - self._expired_at > EXPIRE_EVERY_SECONDS:
            with db.transaction() as session:
                jobs.expire(session)
            self._expired_at = time.monotonic()
        with db.transaction() as session:
            job_id = jobs.claim(session)
        if job_id is None:
            return False
        export.run(job_id, stopping=self._stop)
        return True
