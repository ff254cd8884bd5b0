"""The HTTP process model: uvicorn workers, each with its own SO_REUSEPORT socket.

uvicorn's own multi-worker mode shares one listening socket, and long-lived keep-alive connections (integration
engines hold a few for hours) then pile onto whichever worker accepted first: 16 of 16 on one worker was seen,
halving throughput. With a socket per worker the kernel spreads new connections across workers.
"""

import logging
import multiprocessing
import signal
import socket
import sys
import time
from types import FrameType

import uvicorn

from app.logging import configure, fields

log = logging.getLogger("qiao.server")
UVICORN_OPTIONS = {"loop": "uvloop", "http": "httptools", "access_log": False, "log_config": None}
#: Seconds a thread may hold the GIL while another waits (Python's default 0.005). A worker's background threads (the
#: audit writer's flush, subscription delivery) run pure Python for milliseconds; a request thread coming back from a
#: socket or the database waited up to the whole interval behind them, at each of its several returns. At 1 ms, the
#: secured server against itself (tests/benchmarks/security_overhead.py, 2026-12-07, two runs): p99 of reads at a
#: fixed rate −15% and −12%, saturated −0% and −13%; of searches −12% twice saturated, −3% and +6% at a fixed rate;
#: p50 −9% to +1% and CPU per request −3% to +2%. Two identical servers measured the same way (A/A) differed by −9% to
#: +1% at p99 and up to 5% at p50, so only the fixed-rate reads stand out from the noise; nothing got worse.
SWITCH_INTERVAL = 0.001


def run(host: str, port: int, workers: int, log_level: str = "INFO") -> None:
    if workers <= 1:
        sys.setswitchinterval(SWITCH_INTERVAL)
        uvicorn.run("app.main:create_app", factory=True, host=host, port=port, **UVICORN_OPTIONS)  # type: ignore[arg-type]
        return
    _supervise(host, port, workers, log_level)


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def _worker(host: str, port: int, log_level: str) -> None:
    configure(log_level)
    sys.setswitchinterval(SWITCH_INTERVAL)
    sock = _listening_socket(host, port)
    config = uvicorn.Config("app.main:create_app", factory=True, **UVICORN_OPTIONS)  # type: ignore[arg-type]
    uvicorn.Server(config).run(sockets=[sock])


def _supervise(host: str, port: int, workers: int, log_level: str) -> None:
    """Start the workers, restart any that dies, stop them all on SIGINT/SIGTERM."""
    context = multiprocessing.get_context("spawn")
    stopping = False

    def start() -> multiprocessing.process.BaseProcess:
        process = context.Process(target=_worker, args=(host, port, log_level), daemon=False)
        process.start()
        return process

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    _listening_socket(host, port).close()  # fail early, in the parent, if the port is taken
    processes = [start() for _ in range(workers)]
    log.info("server.started", extra=fields(host=host, port=port, workers=workers))
    while not stopping:
        time.sleep(0.5)
        for i, process in enumerate(processes):
            if not process.is_alive() and not stopping:
                log.error("server.worker_died", extra=fields(pid=process.pid, exitcode=process.exitcode))
                processes[i] = start()
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=30)
