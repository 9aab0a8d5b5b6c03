"""Board replies are data: the host never runs what a board sends (docs/security.md, "Board replies are data").

Real board processes. A well-behaved board refuses to send a ``run()`` result
that is not data; a hostile one (code sent with ``run()`` that writes raw
frames to its own connection) cannot make the host unpickle, evaluate or
build anything but data.
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Tuple

import numpy as np
import pytest

import farm
from conftest import wait_for
from farm.errors import BoardBusyError, DataError, RemoteError, SessionLostError
from farm.ops.processes import DaemonProcess
from farm.protocol.ops import Op

ForgedFrame = Tuple[int, int, dict, bytes]  # op, request id, meta, payload


def _evil_class(marker: Path) -> type:
    """A class whose instances, unpickled, run ``touch marker``."""

    class Evil:
        def __reduce__(self) -> Tuple[Callable[..., Any], Tuple[str]]:
            return os.system, ("touch %s" % marker,)

    return Evil


def _forger(host_address: Tuple[str, int], frames: List[ForgedFrame]) -> Callable[[], None]:
    """A function for ``run()`` that writes ``frames`` raw to its session's connection, as a hostile board would."""

    def forge() -> None:
        import os
        import socket

        from farm.protocol.framing import encode_frame

        for name in os.listdir("/proc/self/fd"):
            try:
                sock = socket.socket(fileno=int(name))
            except (OSError, ValueError):
                continue
            try:
                if sock.getpeername()[:2] == host_address:
                    for frame in frames:
                        sock.sendall(b"".join(bytes(part) for part in encode_frame(*frame)))
                    return
            except OSError:
                pass
            finally:
                sock.detach()
        raise RuntimeError("no connection to %s:%d in this session" % host_address)

    return forge


@pytest.fixture
def remote(shared_board: DaemonProcess) -> Iterator[farm.RemoteSession]:
    """A session on the module's board, once the board is done with the previous test's (a hostile one's)."""

    def connect() -> Optional[farm.RemoteSession]:
        try:
            return farm.connect(*shared_board.address, key="test")
        except BoardBusyError:
            return None

    with wait_for(connect, 10, "the board to end the previous session") as session:
        yield session


def _host_address(remote: farm.RemoteSession) -> Tuple[str, int]:
    return tuple(remote._conn.sock.getsockname()[:2])  # type: ignore[return-value]


# --- a well-behaved board --------------------------------------------------------------


def test_a_result_that_is_not_data_is_refused_naming_its_type_and_nothing_runs(
    remote: farm.RemoteSession, tmp_path: Path
) -> None:
    marker = tmp_path / "MARKER"
    evil = _evil_class(marker)
    with pytest.raises(DataError) as info:
        remote.run(lambda: evil())  # made on the board
    message = str(info.value)
    assert "Evil is not data" in message, message
    assert "run_trusted()" in message, message
    assert isinstance(info.value, RemoteError) and not isinstance(info.value, SessionLostError)
    assert not marker.exists()
    assert remote.run(lambda: "still usable") == "still usable"


def test_run_trusted_pickles_and_the_host_runs_what_the_pickle_names(
    remote: farm.RemoteSession, tmp_path: Path
) -> None:
    marker = tmp_path / "MARKER"
    evil = _evil_class(marker)
    assert remote.run_trusted(lambda: evil()) == 0  # os.system's exit status: it ran here, on the host
    assert marker.exists()
    assert remote.run_trusted(lambda: {"a": Path("x")}) == {"a": Path("x")}


def test_data_round_trips_through_a_real_board(remote: farm.RemoteSession) -> None:
    values = [
        None,
        True,
        -(2**4000),
        float("inf"),
        1.5 - 2j,
        "text \x00 \U0001f600",
        b"\xff\x00",
        [1, (2, [3])],
        {"a": {1: frozenset({2})}, (1, "b"): set()},
        np.float32(1.25),
        np.bool_(True),
        np.uint64(2**64 - 1),
    ]
    got = remote.run(lambda: values)
    assert got == values
    assert [type(item) for item in got] == [type(item) for item in values]

    def arrays() -> list:  # made on the board (a pickle of a big-endian array arrives little-endian)
        return [
            np.arange(12, dtype=">i4").reshape(3, 4),
            np.arange(10.0)[::3],
            np.asfortranarray(np.arange(6, dtype=np.complex64).reshape(2, 3)),
            np.array(True),
            np.zeros((0, 5), np.float16),
        ]

    for made, back in zip(arrays(), remote.run(arrays)):
        assert (back.dtype.str, back.shape) == (made.dtype.str, made.shape)
        np.testing.assert_array_equal(back, made)


def test_results_beyond_the_bounds_or_of_unadmitted_dtypes_are_refused(remote: farm.RemoteSession) -> None:
    def nested() -> list:
        value: list = []
        for _ in range(100):
            value = [value]
        return value

    cases = [
        (nested, "containers nested more than 64 deep"),
        (lambda: np.array([None, 1], dtype=object), "dtype object is not data"),
        (lambda: np.zeros(2, dtype=[("x", "i4")]), "is not data"),
        (lambda: np.longdouble(1), "dtype float128 is not data"),
        (lambda: 1 << 40000, "exceeds the limit of 4096 bytes"),
        (lambda: bytearray(b"x"), "type bytearray is not data"),
        (lambda: os.stat("."), "type os.stat_result is not data"),
    ]
    for function, expected in cases:
        with pytest.raises(DataError, match=expected):
            remote.run(function)
    assert remote.run(lambda: 1) == 1


def test_data_results_do_not_load_numpy_on_the_board(remote: farm.RemoteSession) -> None:
    assert remote.run(lambda: [1, {"two": 2.0}, (None,)]) == [1, {"two": 2.0}, (None,)]
    assert remote.run(lambda: "numpy" in sys.modules) is False


# --- a hostile board -------------------------------------------------------------------


def _pickle_of_evil(marker: Path) -> bytes:
    return pickle.dumps(_evil_class(marker)())


HOSTILE_RESULTS = {
    "pickle": (_pickle_of_evil, "a pickle where data was expected"),
    "unknown tag": (lambda marker: b"RV\x01X", "unknown value tag 0x58"),
    "pickle after the magic": (lambda marker: b"RV\x01" + _pickle_of_evil(marker), "unknown value tag 0x80"),
    "object dtype": (lambda marker: b"RV\x01a\x03|O8\x01" + struct.pack("<Q", 1) + bytes(8), "dtype b'|O8'"),
    "unhashable key": (lambda marker: b"RV\x01d\x01\x00\x00\x00l\x00\x00\x00\x00N", "dict key is a list"),
    "deep nesting": (
        lambda marker: b"RV\x01" + b"l\x01\x00\x00\x00" * 100000 + b"N",
        "containers nested more than 64 deep",
    ),
    "huge int": (lambda marker: b"RV\x01i" + struct.pack("<I", 1 << 30), "an int of 1073741824 bytes"),
    "huge count": (lambda marker: b"RV\x01l\xff\xff\xff\xff", "announces 4294967295 elements"),
    "trailing bytes": (lambda marker: b"RV\x01NN", "1 bytes follow the value"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_RESULTS))
def test_a_hostile_boards_run_reply_is_refused_and_nothing_runs(
    remote: farm.RemoteSession, tmp_path: Path, case: str
) -> None:
    make, expected = HOSTILE_RESULTS[case]
    marker = tmp_path / "MARKER"
    forged = [(int(Op.RESULT), remote._next_id, {}, make(marker))]
    with pytest.raises(SessionLostError) as info:
        remote.run(_forger(_host_address(remote), forged))
    message = str(info.value)
    assert "a run() result that is not data" in message and expected in message, message
    assert remote.closed
    assert not marker.exists()


def test_a_hostile_boards_error_reply_of_the_wrong_types_is_a_remote_error(remote: farm.RemoteSession) -> None:
    meta = {"type": ["DataError"], "message": {"nested": [1]}, "traceback": 7}
    forged = [(int(Op.ERROR), remote._next_id, meta, b"")]
    with pytest.raises(RemoteError) as info:
        remote.run(_forger(_host_address(remote), forged))
    assert type(info.value) is RemoteError
    assert info.value.remote_type == '["DataError"]' and info.value.remote_traceback == "7"
    assert '{"nested": [1]}' in str(info.value)


@pytest.mark.parametrize(
    "payload, expected",
    [
        (b"[" * 100000 + b"]" * 100000, "not JSON"),
        (b"[" + b"9" * 100000 + b"]", "not JSON"),
        (b'{"a": 1}', "not a list of names"),
        (b'["a", 1]', "not a list of names"),
        (b"\xff", "not JSON"),
    ],
    ids=["deep nesting", "huge number", "an object", "not names", "not UTF-8"],
)
def test_a_hostile_boards_listdir_reply_is_a_clear_error(
    remote: farm.RemoteSession, payload: bytes, expected: str
) -> None:
    run_id = remote._next_id
    none = b"RV\x01N"
    forged = [(int(Op.RESULT), run_id, {}, none), (int(Op.RESULT), run_id + 1, {}, payload)]
    assert remote.run(_forger(_host_address(remote), forged)) is None
    with pytest.raises(SessionLostError, match="a LISTDIR reply that is %s" % expected):
        remote.listdir()


def test_a_hostile_boards_reply_fields_of_the_wrong_type_are_a_clear_error(remote: farm.RemoteSession) -> None:
    remote.system_info()  # read now: empty() needs it first
    run_id = remote._next_id
    forged = [(int(Op.RESULT), run_id, {}, b"RV\x01N"), (int(Op.RESULT), run_id + 1, {"id": "7; os.system"}, b"")]
    assert remote.run(_forger(_host_address(remote), forged)) is None
    with pytest.raises(SessionLostError, match="a reply whose field 'id' is not of type int"):
        remote.empty(4)


def test_a_run_request_for_an_unknown_result_encoding_is_a_protocol_error(remote: farm.RemoteSession) -> None:
    import cloudpickle

    payload = cloudpickle.dumps((os.getpid, (), {}))
    with pytest.raises(SessionLostError, match="RUN asks for its result as 'yaml', not as data or 'pickle'"):
        remote._request(Op.RUN, {"result": "yaml"}, payload)
