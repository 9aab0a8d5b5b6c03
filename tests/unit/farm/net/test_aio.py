"""farm.aio in one process: listeners and connections on 127.0.0.1, with and without TLS (the tests' certificates)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any, Awaitable, Callable, List, Optional

import pytest
from farm_certs import TlsFiles

from farm.net.aio import DEFAULT_LIMITS, Handler, open_connection, proven, start_listener
from farm.net.gate import Limits
from farm.net.sockets import bind_first_free
from farm.net.tls import TlsConfig, TlsError
from farm.protocol.tracker import encode_magic

HOST = "127.0.0.1"


async def echo_upper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer one read with the same bytes in upper case, then close."""
    writer.write((await reader.read(100)).upper())
    await writer.drain()
    writer.close()


async def eventually(condition: Callable[[], Any], timeout: float, what: str) -> None:
    """Let the loop run until ``condition()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("timed out after %g s waiting until %s" % (timeout, what))
        await asyncio.sleep(0.01)


def serve(
    handler: Handler,
    tls: Optional[TlsConfig],
    body: Callable[[int, asyncio.AbstractServer], Awaitable[None]],
    limits: Limits = DEFAULT_LIMITS,
) -> None:
    """Run ``body(port, listener)`` against a listener on 127.0.0.1 that serves with ``handler`` within ``limits``,
    then close it."""

    async def main() -> None:
        sock = bind_first_free(HOST, 0, 0)
        listener = await start_listener(sock, handler, tls, "test daemon", limits)
        async with listener:
            await body(sock.getsockname()[1], listener)
        assert sock.fileno() == -1  # closing the listener closed its socket

    asyncio.run(main())


def logged(caplog: pytest.LogCaptureFixture, text: str) -> List[str]:
    return [record.getMessage() for record in caplog.records if text in record.getMessage()]


def test_without_tls_the_listener_is_asyncios_plain_server() -> None:
    async def body(port: int, listener: asyncio.AbstractServer) -> None:
        reader, writer = await open_connection(HOST, port, None)
        assert writer.get_extra_info("ssl_object") is None
        writer.write(b"plain")
        assert await reader.read() == b"PLAIN"
        writer.close()

    serve(echo_upper, None, body)


def test_with_tls_both_ends_speak_tls_and_the_handler_gets_the_streams(tls_files: TlsFiles) -> None:
    server_sides: List[Any] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server_sides.append(writer.get_extra_info("ssl_object"))
        await echo_upper(reader, writer)

    async def body(port: int, listener: asyncio.AbstractServer) -> None:
        assert listener.is_serving()
        reader, writer = await open_connection(HOST, port, tls_files.client())
        assert writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
        writer.write(b"secret words")
        assert await reader.read() == b"SECRET WORDS"
        writer.close()

    serve(handler, tls_files.daemon(), body)
    assert len(server_sides) == 1 and server_sides[0] is not None


def test_a_peer_that_does_not_start_tls_is_refused_with_what_it_spoke(
    tls_files: TlsFiles, caplog: pytest.LogCaptureFixture
) -> None:
    async def never_called(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pytest.fail("a peer without TLS reached the handler")

    async def body(port: int, listener: asyncio.AbstractServer) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        client_port = writer.get_extra_info("sockname")[1]
        writer.write(encode_magic())
        with pytest.raises(ConnectionResetError):  # closed with the magic unread
            await reader.read()
        writer.close()
        expected = "refused %s:%d: it spoke TVM's tracker protocol, not TLS" % (HOST, client_port)
        assert logged(caplog, "refused") == [expected]

    serve(never_called, tls_files.daemon(), body)


def test_a_client_that_refuses_the_certificate_is_logged_and_gets_a_tls_error(
    tls_files: TlsFiles, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(port: int, listener: asyncio.AbstractServer) -> None:
        with pytest.raises(TlsError, match=r"127\.0\.0\.1:%d failed: the certificate was refused" % port):
            await open_connection(HOST, port, tls_files.client(ca=tls_files.other_ca))
        await eventually(lambda: logged(caplog, "refused"), 10, "the listener logs the refusal")
        (line,) = logged(caplog, "refused")  # asyncio's client closes without telling why
        assert line.endswith(
            "it ended the connection during the TLS handshake (closed; does it trust this certificate?)"
        )

    serve(echo_upper, tls_files.daemon(), body)


def test_dialling_a_plain_listener_with_tls_names_the_problem(tls_files: TlsFiles) -> None:
    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.close()

    async def body(port: int, listener: asyncio.AbstractServer) -> None:
        with pytest.raises(TlsError, match=r":%d failed: it closed the connection \(does it use TLS" % port):
            await open_connection(HOST, port, tls_files.client())

    serve(close_at_once, None, body)


def test_a_handler_that_fails_is_logged_and_the_next_connection_is_served(
    tls_files: TlsFiles, caplog: pytest.LogCaptureFixture
) -> None:
    calls: List[int] = []

    async def fails_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug in the handler")
        await echo_upper(reader, writer)

    async def body(port: int, listener: asyncio.AbstractServer) -> None:
        reader, writer = await open_connection(HOST, port, tls_files.client())
        assert await reader.read() == b""  # the listener closed the connection of the failed handler
        writer.close()
        assert any("the test daemon failed serving" in line for line in logged(caplog, "failed serving"))
        reader, writer = await open_connection(HOST, port, tls_files.client())
        writer.write(b"again")
        assert await reader.read() == b"AGAIN"
        writer.close()

    serve(fails_once, tls_files.daemon(), body)
    assert len(calls) == 2


def connect_from(source: str, port: int) -> socket.socket:
    """A connection to the listener from ``source`` (any 127.0.0.0/8 address: loopback answers them all)."""
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect((HOST, port))
    return sock


def closed_by_the_listener(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("with_tls", [False, True], ids=["plain", "tls"])
def test_unproven_connections_are_bounded_per_address_and_in_all_and_refusals_are_logged_once_per_interval(
    tls_files: TlsFiles, caplog: pytest.LogCaptureFixture, with_tls: bool
) -> None:
    async def body(port: int, listener: asyncio.AbstractServer) -> None:
        crowd = [connect_from("127.0.0.2", port) for _ in range(4)]  # its share
        refused = [connect_from("127.0.0.2", port) for _ in range(3)]
        others: List[socket.socket] = []
        try:
            for sock in refused:  # closed at once: the peer sees the end of the stream
                await eventually(lambda s=sock: closed_by_the_listener(s), 10, "the listener closes the connection")
            others += [connect_from("127.0.0.3", port) for _ in range(2)]  # other addresses get theirs: full now
            others.append(connect_from("127.0.0.4", port))  # takes the place of the crowd's oldest
            await eventually(lambda: closed_by_the_listener(crowd[0]), 10, "the crowd's oldest is closed")
            assert not any(closed_by_the_listener(sock) for sock in crowd[1:] + others)
            assert logged(caplog, "took its place") == [
                "refused 127.0.0.2:%d: it proved nothing, and a connection from an address with fewer took its "
                "place (--max-unproven)" % crowd[0].getsockname()[1]
            ]
            others.append(connect_from("127.0.0.3", port))  # its third: 127.0.0.2 holds three, and gives one more
            await eventually(lambda: closed_by_the_listener(crowd[1]), 10, "the crowd's next oldest is closed")
            others.append(connect_from("127.0.0.3", port))  # its fourth: it holds the most now, so it waits
            await eventually(lambda: closed_by_the_listener(others[-1]), 10, "the listener refuses past its total")
            assert not any(closed_by_the_listener(sock) for sock in crowd[2:] + others[:-1])
            assert logged(caplog, "--max-unproven)")[-1].endswith(
                ": 6 connections have proven nothing yet, none from an address with more than 127.0.0.3 "
                "(--max-unproven)"
            )
        finally:
            for sock in crowd + refused + others:
                sock.close()
        (per_address,) = logged(caplog, "--max-unproven-per-address")  # the other two: counted, not logged
        assert per_address.endswith(
            ": 4 connections from 127.0.0.2 have proven nothing yet (--max-unproven-per-address)"
        )

    caplog.set_level(logging.INFO, logger="farm.aio")
    serve(echo_upper, tls_files.daemon() if with_tls else None, body, Limits(total=6, per_address=4, seconds=30))


def test_a_connection_that_proves_nothing_in_time_is_closed_and_one_that_proves_itself_no_longer_counts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def proves_after_a_byte(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await reader.read(1):
            proven()
            proved.append(1)
            await reader.read(100)  # then stays as long as its peer
        writer.close()

    async def body(port: int, listener: asyncio.AbstractServer) -> None:
        member = connect_from("127.0.0.2", port)
        member.sendall(b"!")
        await eventually(lambda: proved, 10, "the member proves itself")
        silent = connect_from("127.0.0.2", port)  # the address's one unproven connection: the member left its share
        started = time.monotonic()
        await eventually(lambda: closed_by_the_listener(silent), 10, "the listener closes the silent connection")
        assert 0.4 < time.monotonic() - started < 5  # at its deadline
        assert not closed_by_the_listener(member)  # proven: no deadline
        expected = "refused 127.0.0.2:%d: it proved nothing within 0.5 s" % silent.getsockname()[1]
        member.close()
        silent.close()
        assert logged(caplog, "proved nothing") == [expected]

    proved: List[int] = []
    serve(proves_after_a_byte, None, body, Limits(total=8, per_address=1, seconds=0.5))


def test_handshakes_beyond_the_bound_are_refused_and_the_listener_serves_again_after(
    tls_files: TlsFiles, caplog: pytest.LogCaptureFixture
) -> None:
    bound, extra = 8, 3

    async def body(port: int, listener: asyncio.AbstractServer) -> None:
        silent = [socket.create_connection((HOST, port)) for _ in range(bound + extra)]
        try:
            await eventually(
                lambda: logged(caplog, "have proven nothing yet"),
                10,
                "the listener refuses the connections beyond its bound",
            )
        finally:
            for sock in silent:
                sock.close()
        assert logged(caplog, "have proven nothing yet")[0].endswith(
            ": %d connections from 127.0.0.1 have proven nothing yet (--max-unproven-per-address)" % bound
        )
        await eventually(
            lambda: len(logged(caplog, "closed the connection before its TLS handshake")) == bound,
            10,
            "the listener notices that the silent connections it held closed",
        )
        reader, writer = await open_connection(HOST, port, tls_files.client())  # the silent ones left: room again
        writer.write(b"room")
        assert await reader.read() == b"ROOM"
        writer.close()

    caplog.set_level(logging.INFO, logger="farm.aio")
    serve(echo_upper, tls_files.daemon(), body, Limits(total=64, per_address=bound, seconds=30))
