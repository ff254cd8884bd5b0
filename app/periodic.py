"""A daemon thread per server process that does a piece of work every few seconds until the server stops: the
export worker, the clock. The work keeps its state in the database, so a round that fails is logged and the next
round tries again."""

import logging
import threading
from collections.abc import Callable

from app.logging import fields

log = logging.getLogger("qiao")


class Periodic:
    def __init__(self, name: str, every: float, work: Callable[[threading.Event], object]) -> None:
        """`work` is handed the stop event, to end a long round early (an export hands its job back)."""
        self._name = name
        self._every = every
        self._work = work
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"qiao-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop after the round in hand."""
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self._work(self._stop)
            except Exception as error:  # noqa: BLE001 - keep serving; the next round tries again
                log.error(f"{self._name}.round_failed", exc_info=error, extra=fields(error=type(error).__name__))
