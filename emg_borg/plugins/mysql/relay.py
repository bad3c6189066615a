"""mysqldump's one connection, relayed so that emg-borg knows its server thread id.

`python -I relay.py TARGET PARENT SECONDS STALL`, started with its working directory a private (0700)
directory and its stdout a pipe to before-backup. It listens on the Unix socket `s` there and
takes exactly one connection (mysqldump's: the socket is then removed, with its directory),
connects to the server (`unix:PATH` or `tcp:HOST:PORT`), reads the server's first packet, writes
`thread N` (the connection id that packet carries, the id the server's process list shows) or
`error TEXT` to stdout, and from then on copies bytes both ways unchanged: authentication and
TLS pass through as they would on a direct connection.

Why: MariaDB's process list shows no client pid, and for a Unix socket not even a client port;
performance_schema is off by default and MariaDB's mysqldump has no init command. The server's
greeting is the one place where a connection learns its own id before it sends anything.

It ends with the connection: when either side closes, the other is closed and the relay exits,
so it dies with mysqldump. When no byte has passed either way for STALL seconds, it writes
`stalled STALL` and exits, closing both sides: mysqldump has no read timeout of its own, so a
server that stops answering mid-dump (a stopped or hung replica) would hold the backup, and a
borg reading the dump, for ever. mysqldump never pauses that long by itself: its output is
drained at its own pace (and a server kept waiting by a blocked client gives up after its
net_write_timeout). Until mysqldump connects it gives up when the process that started it
is gone, or after SECONDS. Only the standard library, and it is started by its path: it must not
wait for the package's imports.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

SOCKET_NAME = "s"
BUFFER = 1 << 20


def report(line: str) -> None:
    try:
        os.write(1, (line.replace("\n", " ") + "\n").encode(errors="replace"))
    except OSError:
        pass  # before-backup stopped reading (it has what it needs)


def accept_one(parent: int, seconds: float) -> socket.socket | None:
    """The first connection to `s`; None when the parent is gone or time is up. The socket and
    its directory are removed either way: nobody else can connect."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(SOCKET_NAME)
        listener.listen(1)
        listener.settimeout(0.05)
        report("listening")
        deadline = time.monotonic() + seconds
        while True:
            try:
                return listener.accept()[0]
            except socket.timeout:
                if os.getppid() != parent or time.monotonic() > deadline:
                    return None
    finally:
        listener.close()
        directory = os.getcwd()
        for remove in (lambda: os.unlink(SOCKET_NAME), lambda: os.chdir("/"), lambda: os.rmdir(directory)):
            try:
                remove()
            except OSError:
                pass


def connect(target: str) -> socket.socket:
    kind, _, where = target.partition(":")
    if kind == "unix":
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.connect(where)
        return server
    host, _, port = where.rpartition(":")
    server = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
    server.settimeout(None)
    server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return server


def receive_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the server closed the connection before its greeting")
        data += chunk
    return data


def greeting(server: socket.socket) -> tuple[bytes, str]:
    """The server's first packet, and the line that reports it: `thread N` from a protocol-10
    handshake (version byte, NUL-terminated server version, 4-byte little-endian connection
    id), else `error ...` (an error packet: too many connections, a blocked host)."""
    header = receive_exactly(server, 4)
    payload = receive_exactly(server, int.from_bytes(header[:3], "little"))
    if payload[:1] == b"\x0a" and b"\0" in payload[1:]:
        end = payload.index(b"\0", 1)
        return header + payload, f"thread {int.from_bytes(payload[end + 1:end + 5], 'little')}"
    if payload[:1] == b"\xff":
        return header + payload, "error " + payload[3:].lstrip(b"#").decode(errors="replace")
    return header + payload, f"error an unknown greeting from the server (first byte {payload[:1].hex()})"


def pump(source: socket.socket, destination: socket.socket, moved: list[float]) -> None:
    """Copy until `source` ends, then pass the end on; `moved[0]` is when bytes last passed. A
    broken side ends the whole relay."""
    buffer = bytearray(BUFFER)
    view = memoryview(buffer)
    try:
        while size := source.recv_into(buffer):
            moved[0] = time.monotonic()
            destination.sendall(view[:size])
            moved[0] = time.monotonic()
        destination.shutdown(socket.SHUT_WR)
    except OSError:
        os._exit(0)  # closes both sockets: mysqldump or the server sees the end at once


def main(argv: list[str]) -> int:
    target, parent, seconds, stall = argv[1], int(argv[2]), float(argv[3]), float(argv[4])
    client = accept_one(parent, seconds)
    if client is None:
        return 1
    try:
        server = connect(target)
        first, line = greeting(server)
    except OSError as error:
        report(f"error cannot connect to the server ({target}): {error.strerror or error}")
        return 1
    report(line)
    try:
        client.sendall(first)
    except OSError:
        return 1
    moved = [time.monotonic()]
    pumps = [threading.Thread(target=pump, args=ends + (moved,), daemon=True)
             for ends in ((client, server), (server, client))]
    for thread in pumps:
        thread.start()
    while alive := [thread for thread in pumps if thread.is_alive()]:
        alive[0].join(min(1.0, stall / 4))
        if alive[0].is_alive() and time.monotonic() - moved[0] > stall:
            report(f"stalled {stall:g}")
            os._exit(3)  # closes both sockets: mysqldump fails at once ("Lost connection")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
