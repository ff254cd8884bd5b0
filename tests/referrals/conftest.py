"""Institutions as in tests/auth, and webhook receivers: real HTTP servers on loopback that record what they get."""

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest

from tests.auth.conftest import ec_key, institutions, login, register, rsa_key  # noqa: F401 (fixtures)


class Receiver:
    """A subscriber's rest-hook endpoint; `failing` makes it answer 500 until reset, `delay` answer late (seconds);
    `senders` are the client ports notifications came from, in order."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.senders: list[int] = []
        self.failing = False
        self.delay = 0.0
        self.refused = 0
        self._arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.failing:
                    receiver.refused += 1
                    self.send_response(500)
                else:
                    with receiver._arrived:
                        receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                        receiver.senders.append(self.client_address[1])
                        receiver._arrived.notify_all()
                    time.sleep(receiver.delay)
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bundles(self) -> list[dict[str, Any]]:
        return [orjson.loads(body) for _, body in self.received]

    def wait_for(self, predicate: Any, timeout: float = 15) -> list[dict[str, Any]]:
        with self._arrived:
            assert self._arrived.wait_for(lambda: predicate(self.bundles()), timeout), f"not received in {timeout} s: {self.bundles()}"
        return self.bundles()


@pytest.fixture
def receivers() -> Iterator[dict[str, Receiver]]:
    made = {name: Receiver() for name in ("chc", "hospital", "other")}
    yield made
    for receiver in made.values():
        receiver.server.shutdown()
