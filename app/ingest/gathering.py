"""Group commit for senders that wait for each acknowledgement (MLLP): messages that arrive while a batch is being
applied wait and go together in the next one. An idle listener applies a message at once; a busy one applies many
per transaction, and its rate no longer rests on one commit and a few dozen statements per message."""

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

import anyio

Item = TypeVar("Item")
Result = TypeVar("Result")


class Gathering(Generic[Item, Result]):
    """`submit` an item, get its result; `process` (run in a thread) takes a list and returns results in order."""

    def __init__(self, process: Callable[[list[Item]], list[Result]], *, limit: int = 64) -> None:
        self._process = process
        self._limit = limit
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._draining: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._draining is None:
            self._draining = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[: self._limit], self._waiting[self._limit:]
                try:
                    results = await anyio.to_thread.run_sync(self._process, [item for item, _ in batch])
                except Exception as error:  # noqa: BLE001 - each waiting sender hears of it (its connection closes)
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._draining = None
