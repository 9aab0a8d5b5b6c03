"""farm.aio in one process: listeners and connections on 127.0.0.1, with and without TLS (the tests' certificates)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any, Awaitable, Callable, List, Optional

import pytest
from farm_certs import TlsFiles

from farm.aio import MAX_PENDING_HANDSHAKES, Handler, open_connection, start_listener
from farm.net import bind_first_free
from farm.protocol.tracker import encode_magic
from farm.tls import TlsConfig, TlsError

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
    handler: Handler, tls: Optional[TlsConfig], body: Callable[[int, asyncio.AbstractServer], Awaitable[None]]
) -> None:
    """Run ``body(port, listener)`` against a listener on 127.0.0.1 that serves with ``handler``, then close it."""

    async def main() -> None:
        sock = bind_first_free(HOST, 0, 0)
        listener = await start_listener(sock, handler, tls, "test daemon")
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


def test_handshakes_beyond_the_bound_are_refused_and_the_listener_serves_again_after(
    tls_files: TlsFiles, caplog: pytest.LogCaptureFixture
) -> None:
    extra = 3

    async def body(port: int, listener: asyncio.AbstractServer) -> None:
        silent = [socket.create_connection((HOST, port)) for _ in range(MAX_PENDING_HANDSHAKES + extra)]
        try:
            await eventually(
                lambda: len(logged(caplog, "TLS handshakes are pending already")) == extra,
                10,
                "the listener refuses the connections beyond its bound",
            )
        finally:
            for sock in silent:
                sock.close()
        assert logged(caplog, "TLS handshakes are pending already")[0].endswith(
            ": %d TLS handshakes are pending already" % MAX_PENDING_HANDSHAKES
        )
        await eventually(
            lambda: len(logged(caplog, "closed the connection before its TLS handshake")) == MAX_PENDING_HANDSHAKES,
            10,
            "the listener notices that the silent connections it held closed",
        )
        reader, writer = await open_connection(HOST, port, tls_files.client())  # the silent ones left: room again
        writer.write(b"room")
        assert await reader.read() == b"ROOM"
        writer.close()

    caplog.set_level(logging.INFO, logger="farm.aio")
    serve(echo_upper, tls_files.daemon(), body)
