"""A lean SMTP sink for the benchmarks, run as its own process:

    .venv/bin/python bench/smtp_sink.py PORT ARRIVALS_FILE

It speaks enough ESMTP for any client (EHLO with PIPELINING, MAIL, RCPT, DATA, RSET, NOOP, QUIT),
keeps nothing of a message but when it arrived, and appends ``recipient<TAB>time.monotonic()`` lines to
ARRIVALS_FILE (flushed every 50 ms; ``CLOCK_MONOTONIC`` is system-wide, so the benchmark process can
subtract its own ``time.monotonic()`` readings). The dev inbox (aiosmtpd, which also parses every
message) costs ≈ 0.5–1 ms of CPU per message on this box; a measuring device that shares two cores
with what it measures has to cost far less.
"""

import asyncio
import sys
import time
from typing import IO, cast

import uvloop


class SinkProtocol(asyncio.Protocol):
    def __init__(self, out: list[bytes]):
        self.out = out
        self.buf = bytearray()
        self.rcpts: list[bytes] = []
        self.in_data = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)
        self.transport.write(b"220 sink ESMTP ready\r\n")

    def data_received(self, data: bytes) -> None:
        self.buf += data
        replies: list[bytes] = []
        while True:
            if self.in_data:
                end = self.buf.find(b"\r\n.\r\n")
                if end < 0:
                    break
                del self.buf[: end + 5]
                now = b"\t%.6f\n" % time.monotonic()
                self.out.extend(r + now for r in self.rcpts)
                self.rcpts, self.in_data = [], False
                replies.append(b"250 2.0.0 queued\r\n")
                continue
            nl = self.buf.find(b"\r\n")
            if nl < 0:
                break
            line = bytes(self.buf[:nl])
            del self.buf[: nl + 2]
            replies.append(self.command(line))
            if replies[-1].startswith(b"354"):
                self.buf[:0] = b"\r\n"  # so a message's first line may be the terminating "."
        if replies and self.transport is not None:
            self.transport.write(b"".join(replies))
            if replies[-1].startswith(b"221"):
                self.transport.close()

    def command(self, line: bytes) -> bytes:
        verb = line[:4].upper()
        if verb in (b"EHLO", b"HELO"):
            return b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 10485760\r\n"
        if verb == b"MAIL":
            self.rcpts = []
            return b"250 2.1.0 ok\r\n"
        if verb == b"RCPT":
            address = line[line.find(b"<") + 1: line.rfind(b">")]
            self.rcpts.append(address)
            return b"250 2.1.5 ok\r\n"
        if verb == b"DATA":
            if not self.rcpts:
                return b"503 5.5.1 no recipients\r\n"
            self.in_data = True
            return b"354 end with <CRLF>.<CRLF>\r\n"
        if verb == b"RSET":
            self.rcpts = []
            return b"250 2.0.0 ok\r\n"
        if verb == b"QUIT":
            return b"221 2.0.0 bye\r\n"
        if verb == b"NOOP":
            return b"250 2.0.0 ok\r\n"
        return b"502 5.5.2 not implemented\r\n"


async def serve(port: int, out_file: IO[bytes]) -> None:
    out: list[bytes] = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SinkProtocol(out), "127.0.0.1", port, backlog=512)
    async with server:
        while True:
            await asyncio.sleep(0.05)
            if out:
                out_file.write(b"".join(out))
                out_file.flush()
                out.clear()


def main() -> None:
    port, path = int(sys.argv[1]), sys.argv[2]
    with open(path, "ab") as f:
        uvloop.run(serve(port, f))


if __name__ == "__main__":
    main()
