"""MLLP (HL7 v2 Minimal Lower Layer Protocol): <VT> message <FS><CR> over TCP, one acknowledgement per message, in
order. The listener hands each framed message to `handle` and writes back what it returns."""

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

START, END = b"\x0b", b"\x1c\x0d"
MAX_MESSAGE = 16 * 1024 * 1024
log = logging.getLogger("qiao.mllp")
Handler = Callable[[bytes], Awaitable[bytes]]


def frame(message: bytes) -> bytes:
    return START + message + END


async def serve(host: str, port: int, handle: Handler) -> asyncio.Server:
    """Listen (SO_REUSEPORT: every worker process listens on the same port, the kernel spreads connections)."""

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                message = await read_message(reader)
                if message is None:
                    break
                writer.write(frame(await handle(message)))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except ValueError as error:  # oversized frame: drop the connection, the sender will retry
            log.warning("mllp.dropped", extra={"fields": {"reason": str(error)}})
        finally:
            writer.close()

    return await asyncio.start_server(connection, host, port, reuse_port=hasattr(socket, "SO_REUSEPORT"), limit=MAX_MESSAGE)


async def read_message(reader: asyncio.StreamReader) -> bytes | None:
    """The next framed message; bytes before the start block are discarded. None at end of stream."""
    try:
        data = await reader.readuntil(END)
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError as error:
        raise ValueError(f"MLLP frame over {MAX_MESSAGE} bytes") from error
    start = data.find(START)
    return data[start + 1 if start >= 0 else 0:-len(END)]


async def send(host: str, port: int, messages: list[bytes]) -> list[bytes]:
    """A client: send messages on one connection, one at a time, and return the acknowledgements."""
    reader, writer = await asyncio.open_connection(host, port, limit=MAX_MESSAGE)
    replies = []
    try:
        for message in messages:
            writer.write(frame(message))
            await writer.drain()
            reply = await read_message(reader)
            if reply is None:
                raise ConnectionError("the listener closed the connection")
            replies.append(reply)
    finally:
        writer.close()
    return replies
