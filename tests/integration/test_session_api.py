"""The host client API against real board server processes on 127.0.0.1.

Every test talks to a board started by the fixtures in tests/conftest.py; nothing of the
package is replaced or mocked. Functions handed to ``session.run`` are defined inside the
tests (or returned by factories) so that cloudpickle sends them by value to the board.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import sys
import uuid
from pathlib import Path
from typing import Callable, Dict, Iterator, List

import numpy as np
import pytest

import farm
from conftest import NATIVE_CHECKED, BoardServer, every_board_server, python_board_only, rss
from farm.client.session import RemotePathEscapeError

pytestmark = every_board_server

VADD_SIG = "void vadd(const float *a, const float *b, float *c, int64_t n)"
MATMUL_SIG = "void matmul(const float *a, const float *b, float *c, int64_t m, int64_t k, int64_t n)"
SUM_SIG = "double sum_f64(const double *x, int64_t n)"
REDUCE_SIG = "void reduce_i32(const int32_t *x, int64_t n, int64_t *out)"
AXPY_SIG = "void axpy(double alpha, const double *x, double *y, int64_t n)"
REVERSE_SIG = "void reverse_bytes(void *data, int64_t nbytes)"

ALL_DTYPES = [
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
]
MIB = 1 << 20


# --- helpers -------------------------------------------------------------------------


def _session_rss_kib(session: farm.RemoteSession) -> int:
    """The resident set size of the session's process, in KiB (read from here: the board runs on this machine)."""
    return rss(session.system_info()["pid"]) // 1024


def _in_session_dir(session: farm.RemoteSession, make: Callable[[Path], None]) -> None:
    """Make files in the session's directory from here (the board runs on this machine), as its user would."""
    make(Path(session.system_info()["session_dir"]))


def _sample(dtype: str, shape: tuple, seed: int = 0) -> np.ndarray:
    """Random contents covering the dtype's range (with special values for floats)."""
    rng = np.random.default_rng(seed)
    resolved = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    if resolved.kind == "b":
        flat = rng.integers(0, 2, size=count).astype(bool)
    elif resolved.kind in "iu":
        info = np.iinfo(resolved)
        flat = rng.integers(info.min, info.max, size=count, dtype=resolved, endpoint=True)
    else:
        flat = (rng.standard_normal(count) * 100).astype(resolved)
        specials = np.array([np.nan, np.inf, -np.inf, -0.0, np.finfo(resolved).max, np.finfo(resolved).tiny])
        take = min(count, len(specials))
        flat[:take] = specials[:take].astype(resolved)
    return np.asarray(flat, dtype=resolved).reshape(shape)


def _assert_same_array(got: np.ndarray, expected: np.ndarray) -> None:
    """Same shape, same native dtype and the very same bytes (NaN payloads and -0.0 included)."""
    assert isinstance(got, np.ndarray)
    assert got.shape == expected.shape
    assert got.dtype == expected.dtype.newbyteorder("=")
    np.testing.assert_array_equal(got, expected)
    assert got.tobytes() == np.ascontiguousarray(expected, dtype=got.dtype).tobytes()


def _assert_usable(session: farm.RemoteSession, pid: int) -> None:
    """The session still answers, from the same session process."""
    assert not session.closed
    session.ping()
    assert session.system_info()["pid"] == pid


@pytest.fixture
def other_session(board_factory) -> Iterator[farm.RemoteSession]:
    """A session on a second board, for arrays that belong to another session."""
    host, port = board_factory(key="other").address
    with farm.connect(host, port, key="other") as session:
        yield session


@pytest.fixture
def linalg(remote: farm.RemoteSession, kernels: Dict[str, Path], client_path: str) -> farm.RemoteModule:
    remote.upload(kernels["liblinalg.so"])
    return remote.load_module("liblinalg.so")


@pytest.fixture
def outside_dir(remote: farm.RemoteSession) -> Iterator[Path]:
    """A directory next to the session directory (inside the board's work directory), removed afterwards."""
    session_dir = Path(remote.system_info()["session_dir"])
    outside = session_dir.parent / ("outside-%s" % uuid.uuid4().hex)
    outside.mkdir()
    (outside / "victim.txt").write_bytes(b"precious")
    try:
        yield outside
    finally:
        shutil.rmtree(outside)


# --- system_info ---------------------------------------------------------------------


def test_system_info_describes_the_board(remote: farm.RemoteSession, board_server: BoardServer) -> None:
    info = remote.system_info()
    assert info["machine"] == platform.machine()
    assert info["os"] == platform.system()
    if board_server.native:
        assert info["server"] == "native" and info["python"] is None
    else:
        assert info["server"] == "python" and info["python"] == platform.python_version()
    assert info["hostname"] == socket.gethostname()
    assert info["key"] == "test"
    assert info["server_version"] == farm.__version__
    assert info["byteorder"] == sys.byteorder
    assert os.path.isdir(info["session_dir"])
    assert isinstance(info["pid"], int) and info["pid"] != os.getpid()
    state = info["state"]  # read by the session, as its board's user
    assert state["machine"] == platform.machine() and 0 <= state["cpu"] < (os.cpu_count() or 1)
    assert len(state["load_average"]) == 3 and state["other_processes_running"] >= 0
    assert {"governor", "current_khz", "min_khz", "max_khz", "temperatures_c", "throttled"} <= set(state)


# --- files ---------------------------------------------------------------------------


def test_upload_from_path_and_bytes_then_download(remote: farm.RemoteSession, tmp_path: Path) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(b"hello from the host")
    assert remote.upload(source) == "data.bin"
    assert remote.upload(str(source), target="renamed.bin") == "renamed.bin"
    assert remote.upload(b"raw bytes", target="raw.bin") == "raw.bin"
    assert remote.upload(bytearray(b"a bytearray"), target="ba.bin") == "ba.bin"
    assert remote.upload(memoryview(b"a memoryview"), target="mv.bin") == "mv.bin"

    assert remote.download("data.bin") == b"hello from the host"
    assert remote.download("renamed.bin") == b"hello from the host"
    assert remote.download("raw.bin") == b"raw bytes"
    assert remote.download("ba.bin") == b"a bytearray"
    assert remote.download("mv.bin") == b"a memoryview"
    assert remote.listdir() == ["ba.bin", "data.bin", "mv.bin", "raw.bin", "renamed.bin"]


def test_upload_overwrites_and_handles_empty_files(remote: farm.RemoteSession, tmp_path: Path) -> None:
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    assert remote.upload(empty) == "empty.bin"
    assert remote.download("empty.bin") == b""
    remote.upload(b"first version, longer", target="f.txt")
    remote.upload(b"second", target="f.txt")
    assert remote.download("f.txt") == b"second"


@pytest.mark.parametrize("target", [None, ""])
def test_upload_of_bytes_needs_a_target(remote: farm.RemoteSession, target) -> None:
    with pytest.raises(farm.ArgumentError, match="target"):
        remote.upload(b"no name", target=target)
    assert remote.listdir() == []


def test_upload_into_subdirectory(remote: farm.RemoteSession, tmp_path: Path) -> None:
    assert remote.upload(b"x" * 10, target="sub/x.bin") == "sub/x.bin"
    source = tmp_path / "y.bin"
    source.write_bytes(b"yy")
    assert remote.upload(source, target="sub/deeper/y.bin") == "sub/deeper/y.bin"
    assert remote.listdir() == ["sub"]
    assert remote.listdir("sub") == ["deeper", "x.bin"]
    assert remote.listdir("sub/deeper") == ["y.bin"]
    assert remote.download("sub/x.bin") == b"x" * 10
    assert remote.download("sub/deeper/y.bin") == b"yy"


def test_download_returns_identical_bytes_of_a_large_file(remote: farm.RemoteSession, tmp_path: Path) -> None:
    contents = np.random.default_rng(7).integers(0, 256, size=12 * MIB + 12345, dtype=np.uint8).tobytes()
    source = tmp_path / "big.bin"
    source.write_bytes(contents)
    assert remote.upload(source) == "big.bin"
    assert remote.download("big.bin") == contents
    assert remote.upload(contents, target="big-from-bytes.bin") == "big-from-bytes.bin"
    assert remote.download("big-from-bytes.bin") == contents


def test_remove_file_and_directory(remote: farm.RemoteSession) -> None:
    remote.upload(b"1", target="keep.txt")
    remote.upload(b"2", target="gone.txt")
    remote.upload(b"3", target="dir/a.txt")
    remote.upload(b"4", target="dir/nested/b.txt")
    assert remote.listdir() == ["dir", "gone.txt", "keep.txt"]
    remote.remove("gone.txt")
    assert remote.listdir() == ["dir", "keep.txt"]
    remote.remove("dir")
    assert remote.listdir() == ["keep.txt"]
    assert remote.download("keep.txt") == b"1"


def test_missing_file_errors_name_the_problem_and_keep_the_session(remote: farm.RemoteSession) -> None:
    pid = remote.system_info()["pid"]
    with pytest.raises(farm.RemoteError) as info:
        remote.download("missing.bin")
    assert info.value.remote_type == "FileNotFoundError"
    assert "missing.bin" in str(info.value)
    assert not isinstance(info.value, farm.SessionLostError)
    _assert_usable(remote, pid)

    with pytest.raises(farm.RemoteError) as info:
        remote.remove("missing.bin")
    assert info.value.remote_type == "FileNotFoundError"
    with pytest.raises(farm.RemoteError) as info:
        remote.listdir("no-such-dir")
    assert info.value.remote_type == "FileNotFoundError"
    _assert_usable(remote, pid)
    remote.upload(b"still works", target="after.txt")
    assert remote.download("after.txt") == b"still works"


# --- path escapes --------------------------------------------------------------------


def _assert_escape_refused(call: Callable[[], object]) -> farm.PathEscapeError:
    with pytest.raises(farm.PathEscapeError) as info:
        call()
    error = info.value
    assert isinstance(error, farm.RemoteError) and isinstance(error, RemotePathEscapeError)
    assert not isinstance(error, farm.SessionLostError)
    assert error.remote_type == "PathEscapeError"
    text = str(error)
    assert "absolute path" in text or "outside the session directory" in text or "session directory itself" in text
    return error


def test_relative_and_absolute_escapes_are_refused(remote: farm.RemoteSession, outside_dir: Path) -> None:
    pid = remote.system_info()["pid"]
    victim = outside_dir / "victim.txt"
    rel_dir = "../" + outside_dir.name
    names = [
        str(victim),  # absolute
        rel_dir + "/victim.txt",  # ../outside/victim.txt
        "a/../../" + outside_dir.name + "/victim.txt",
        "../x",
        "a/../../x",
        "/x",
    ]
    for name in names:
        _assert_escape_refused(lambda name=name: remote.download(name))
        _assert_escape_refused(lambda name=name: remote.upload(b"overwritten", target=name))
        _assert_escape_refused(lambda name=name: remote.remove(name))
    for name in [str(outside_dir), rel_dir, "a/../../" + outside_dir.name, "..", "/", "/etc"]:
        _assert_escape_refused(lambda name=name: remote.listdir(name))
    _assert_escape_refused(lambda: remote.upload(b"x", target="."))  # the session directory itself
    _assert_escape_refused(lambda: remote.remove("."))
    assert victim.read_bytes() == b"precious"
    assert sorted(p.name for p in outside_dir.iterdir()) == ["victim.txt"]
    assert not (outside_dir.parent / "x").exists()
    assert remote.listdir() == []  # nothing was created on the way (not even "a")
    _assert_usable(remote, pid)


def test_empty_and_nul_names_are_refused(remote: farm.RemoteSession) -> None:
    calls = [
        lambda: remote.download(""),
        lambda: remote.remove(""),
        lambda: remote.listdir(""),
        lambda: remote.download("a\0b"),
        lambda: remote.upload(b"x", target="a\0b"),
        lambda: remote.remove("a\0b"),
    ]
    for call in calls:
        with pytest.raises(farm.PathEscapeError, match="not a non-empty string"):
            call()
    assert remote.listdir() == []


def test_upload_from_path_with_escaping_target_is_refused(
    remote: farm.RemoteSession, tmp_path: Path, outside_dir: Path
) -> None:
    source = tmp_path / "payload.bin"
    source.write_bytes(b"evil")
    _assert_escape_refused(lambda: remote.upload(source, target="../" + outside_dir.name + "/victim.txt"))
    _assert_escape_refused(lambda: remote.upload(source, target=str(outside_dir / "new.txt")))
    assert (outside_dir / "victim.txt").read_bytes() == b"precious"
    assert not (outside_dir / "new.txt").exists()


def test_symlink_to_etc_is_not_followed(remote: farm.RemoteSession) -> None:
    pid = remote.system_info()["pid"]
    _in_session_dir(remote, lambda root: os.symlink("/etc", root / "link"))
    assert remote.listdir() == ["link"]
    probe = "farm-escape-probe-%s" % uuid.uuid4().hex
    assert not os.path.exists(os.path.join("/etc", probe))
    try:
        _assert_escape_refused(lambda: remote.download("link/hostname"))
        _assert_escape_refused(lambda: remote.upload(b"x", target="link/x"))
        _assert_escape_refused(lambda: remote.upload(b"x", target="link/" + probe))
        _assert_escape_refused(lambda: remote.listdir("link"))
        _assert_escape_refused(lambda: remote.load_module("link/hostname"))
        assert not os.path.exists(os.path.join("/etc", probe))
    finally:
        if os.path.exists(os.path.join("/etc", probe)):
            os.unlink(os.path.join("/etc", probe))
    _assert_usable(remote, pid)


def test_symlink_to_outside_directory_is_not_followed(remote: farm.RemoteSession, outside_dir: Path) -> None:
    pid = remote.system_info()["pid"]
    target = str(outside_dir)

    def make_links(root: Path) -> None:
        os.symlink(target, root / "link")
        os.symlink(os.path.join(target, "victim.txt"), root / "file-link")
        os.symlink(os.path.join(target, "not-yet.txt"), root / "dangling")

    _in_session_dir(remote, make_links)
    assert remote.listdir() == ["dangling", "file-link", "link"]

    _assert_escape_refused(lambda: remote.download("link/victim.txt"))
    _assert_escape_refused(lambda: remote.download("file-link"))
    _assert_escape_refused(lambda: remote.upload(b"x", target="link/x"))
    _assert_escape_refused(lambda: remote.upload(b"x", target="link/sub/x"))
    _assert_escape_refused(lambda: remote.upload(b"overwritten", target="file-link"))
    _assert_escape_refused(lambda: remote.upload(b"created", target="dangling"))
    _assert_escape_refused(lambda: remote.remove("link/victim.txt"))
    _assert_escape_refused(lambda: remote.listdir("link"))
    assert (outside_dir / "victim.txt").read_bytes() == b"precious"
    assert sorted(p.name for p in outside_dir.iterdir()) == ["victim.txt"]

    # Removing the links themselves is allowed and leaves their targets alone.
    remote.remove("link")
    remote.remove("file-link")
    remote.remove("dangling")
    assert remote.listdir() == []
    assert (outside_dir / "victim.txt").read_bytes() == b"precious"
    _assert_usable(remote, pid)


# --- native code ---------------------------------------------------------------------


def test_vadd_with_signature(remote: farm.RemoteSession, kernels: Dict[str, Path], client_path: str) -> None:
    assert remote.upload(kernels["libvadd.so"]) == "libvadd.so"
    module = remote.load_module("libvadd.so")
    vadd = module.get_function("vadd", signature=VADD_SIG)
    assert (vadd._path is not None) == (client_path == "compiled")
    x = np.arange(1000, dtype=np.float32)
    y = np.linspace(-5, 5, 1000, dtype=np.float32)
    a, b = remote.array(x), remote.array(y)
    c = remote.empty(x.shape, "float32")
    assert vadd(a, b, c, x.size) is None
    np.testing.assert_array_equal(c.numpy(), x + y)
    np.testing.assert_array_equal(a.numpy(), x)  # inputs untouched


def test_matmul_matches_numpy(linalg: farm.RemoteModule, remote: farm.RemoteSession) -> None:
    matmul = linalg.get_function("matmul", MATMUL_SIG)
    rng = np.random.default_rng(1)
    m, k, n = 17, 33, 9
    x = rng.standard_normal((m, k)).astype(np.float32)
    y = rng.standard_normal((k, n)).astype(np.float32)
    out = remote.empty((m, n), "float32")
    matmul(remote.array(x), remote.array(y), out, m, k, n)
    np.testing.assert_allclose(out.numpy(), x @ y, rtol=1e-5, atol=1e-5)


def test_reduce_i32_into_int64_output(linalg: farm.RemoteModule, remote: farm.RemoteSession) -> None:
    reduce_i32 = linalg.get_function("reduce_i32", REDUCE_SIG)
    x = np.random.default_rng(2).integers(-(2**31), 2**31 - 1, size=5000, dtype=np.int32)
    out = remote.empty(2, "int64")
    reduce_i32(remote.array(x), x.size, out)
    result = out.numpy()
    assert result.dtype == np.int64
    assert result.tolist() == [int(x.astype(np.int64).sum()), int(x.max())]


def test_sum_f64_returns_a_double(linalg: farm.RemoteModule, remote: farm.RemoteSession) -> None:
    sum_f64 = linalg.get_function("sum_f64", SUM_SIG)
    x = np.array([0.5, 0.25, 1e10, -3.125])
    result = sum_f64(remote.array(x), x.size)
    assert isinstance(result, float)
    assert result == pytest.approx(float(x.sum()), rel=1e-15)
    assert sum_f64(remote.array(x), 1) == 0.5
    assert sum_f64(None, 0) == 0.0  # a NULL pointer with no elements


def test_axpy_with_a_float_argument(linalg: farm.RemoteModule, remote: farm.RemoteSession) -> None:
    axpy = linalg.get_function("axpy", AXPY_SIG)
    x = np.linspace(0, 1, 101)
    y = np.full(101, 3.0)
    ry = remote.array(y)
    axpy(2.5, remote.array(x), ry, x.size)
    np.testing.assert_allclose(ry.numpy(), 2.5 * x + y, rtol=1e-15)
    axpy(2, remote.array(x), ry, x.size)  # an int converts to double through the signature
    np.testing.assert_allclose(ry.numpy(), 4.5 * x + y, rtol=1e-15)


def test_functions_without_signature(linalg: farm.RemoteModule, remote: farm.RemoteSession) -> None:
    add_ints = linalg.get_function("add_ints")
    assert add_ints(2, 3) == 5
    assert add_ints(-7, np.int32(4)) == -3
    assert linalg["noop"]() == 0
    assert linalg["add_ints"](40, 2) == 42
    assert "add_ints" in repr(add_ints) and "liblinalg.so" in repr(linalg)
    # A value that does not fit C int is refused, and the session goes on.
    pid = remote.system_info()["pid"]
    with pytest.raises(farm.ArgumentError, match="does not fit"):
        add_ints(2**40, 1)
    _assert_usable(remote, pid)


def test_load_module_of_missing_file(remote: farm.RemoteSession) -> None:
    pid = remote.system_info()["pid"]
    with pytest.raises(farm.RemoteError) as info:
        remote.load_module("libmissing.so")
    assert "libmissing.so" in str(info.value)
    assert info.value.remote_type == "FileNotFoundError"
    assert not isinstance(info.value, farm.SessionLostError)
    _assert_usable(remote, pid)


def test_load_module_of_a_file_that_is_not_a_library(remote: farm.RemoteSession) -> None:
    pid = remote.system_info()["pid"]
    remote.upload(b"not an ELF file at all", target="libbogus.so")
    with pytest.raises(farm.RemoteError) as info:
        remote.load_module("libbogus.so")
    assert "libbogus.so" in str(info.value)
    _assert_usable(remote, pid)


def test_load_module_built_for_another_machine(remote: farm.RemoteSession, kernels: Dict[str, Path]) -> None:
    header = bytearray(kernels["libvadd.so"].read_bytes())
    machine = 183 if platform.machine() != "aarch64" else 62  # aarch64, or x86_64 on an aarch64 host
    header[18:20] = machine.to_bytes(2, "little" if header[5] == 1 else "big")
    remote.upload(bytes(header), target="libforeign.so")
    with pytest.raises(farm.RemoteError, match="libforeign.so is built for") as info:
        remote.load_module("libforeign.so")
    assert ("aarch64" if machine == 183 else "x86_64") in str(info.value)
    remote.ping()


def test_get_function_of_missing_symbol(linalg: farm.RemoteModule, remote: farm.RemoteSession) -> None:
    pid = remote.system_info()["pid"]
    with pytest.raises(farm.RemoteError) as info:
        linalg.get_function("no_such_symbol")
    assert "no_such_symbol" in str(info.value)
    assert "liblinalg.so" in str(info.value)
    with pytest.raises(farm.RemoteError, match="no_such_symbol"):
        linalg["no_such_symbol"]
    _assert_usable(remote, pid)
    assert linalg["add_ints"](1, 1) == 2


# --- argument checking ---------------------------------------------------------------


@pytest.fixture
def vadd_setup(remote: farm.RemoteSession, kernels: Dict[str, Path], client_path: str):
    remote.upload(kernels["libvadd.so"])
    vadd = remote.load_module("libvadd.so").get_function("vadd", VADD_SIG)
    x = np.arange(8, dtype=np.float32)
    sentinel = np.full(8, -1.0, dtype=np.float32)
    return vadd, remote.array(x), remote.array(x * 2), remote.array(sentinel), sentinel


def _assert_refused_on_host(call: Callable[[], object], match: str) -> None:
    with pytest.raises(farm.ArgumentError, match=match) as info:
        call()
    assert not isinstance(info.value, farm.RemoteError)  # refused before any request went out


def test_wrong_argument_count(vadd_setup) -> None:
    vadd, a, b, c, sentinel = vadd_setup
    _assert_refused_on_host(lambda: vadd(a, b, c), "takes 4 arguments")
    _assert_refused_on_host(lambda: vadd(a, b, c, 8, 8), "takes 4 arguments")
    _assert_refused_on_host(lambda: vadd(), "takes 4 arguments")
    np.testing.assert_array_equal(c.numpy(), sentinel)


def test_wrong_array_dtype(vadd_setup, remote: farm.RemoteSession) -> None:
    vadd, a, b, c, sentinel = vadd_setup
    doubles = remote.array(np.arange(8, dtype=np.float64))
    _assert_refused_on_host(lambda: vadd(doubles, b, c, 8), "float32")
    ints = np.full(8, 7, np.int32)
    int_out = remote.array(ints)
    _assert_refused_on_host(lambda: vadd(a, b, int_out, 8), "int32")
    np.testing.assert_array_equal(c.numpy(), sentinel)
    np.testing.assert_array_equal(int_out.numpy(), ints)


def test_an_array_the_board_does_not_hold_is_refused_there_and_the_session_goes_on(vadd_setup) -> None:
    """A call the client lets through (an array id the board never gave out) is refused by the board, on the path
    that answers plain calls, and the calls after it are answered."""
    vadd, a, b, c, sentinel = vadd_setup
    made_up = farm.RemoteArray(a.session, 1 << 40, (8,), np.float32)
    for _ in range(2):  # the second time the same shape of call, after an error
        with pytest.raises(farm.RemoteError, match="argument 1 is an array that was freed or is not of this session"):
            vadd(made_up, b, c, 8)
        np.testing.assert_array_equal(c.numpy(), sentinel)
    vadd(a, b, c, 8)
    np.testing.assert_array_equal(c.numpy(), np.arange(8, dtype=np.float32) * 3)


def test_host_numpy_array_instead_of_remote(vadd_setup) -> None:
    vadd, a, _b, c, sentinel = vadd_setup
    host = np.arange(8, dtype=np.float32)
    _assert_refused_on_host(lambda: vadd(a, host, c, 8), "host numpy array")
    np.testing.assert_array_equal(c.numpy(), sentinel)


def test_array_of_another_session(vadd_setup, other_session: farm.RemoteSession) -> None:
    vadd, a, _b, c, sentinel = vadd_setup
    foreign = other_session.array(np.arange(8, dtype=np.float32))
    _assert_refused_on_host(lambda: vadd(a, foreign, c, 8), "another session")
    np.testing.assert_array_equal(c.numpy(), sentinel)
    np.testing.assert_array_equal(foreign.numpy(), np.arange(8, dtype=np.float32))


def test_string_and_other_bad_scalars(vadd_setup, linalg: farm.RemoteModule) -> None:
    vadd, a, b, c, sentinel = vadd_setup
    _assert_refused_on_host(lambda: vadd(a, b, c, "8"), "str")
    _assert_refused_on_host(lambda: vadd(a, b, c, 8.0), "expects an integer")
    _assert_refused_on_host(lambda: vadd(a, 1, c, 8), "expects an array")
    _assert_refused_on_host(lambda: vadd(a, b, c, [8]), "list")
    _assert_refused_on_host(lambda: linalg["add_ints"]("1", 2), "str")  # no signature: still checked
    np.testing.assert_array_equal(c.numpy(), sentinel)


# --- arrays --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_round_trip_every_dtype_and_shape(remote: farm.RemoteSession, dtype: str) -> None:
    large = (4 * MIB // np.dtype(dtype).itemsize,)
    for shape in [(), (0,), (3,), (2, 3, 4), (0, 5), large]:
        host = _sample(dtype, shape, seed=len(shape))
        remote_array = remote.array(host)
        assert remote_array.shape == shape
        assert remote_array.dtype == np.dtype(dtype)
        assert remote_array.nbytes == host.nbytes
        _assert_same_array(remote_array.numpy(), host)
        _assert_same_array(remote_array.asnumpy(), host)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_empty_is_zeros(remote: farm.RemoteSession, dtype: str) -> None:
    for shape in [(), (0,), 5, (2, 3, 4), (3 * MIB,)]:
        arr = remote.empty(shape, dtype)
        expected = np.zeros(shape, dtype)
        assert arr.shape == expected.shape and arr.dtype == np.dtype(dtype)
        _assert_same_array(arr.numpy(), expected)


def test_non_contiguous_inputs(remote: farm.RemoteSession) -> None:
    base = _sample("float32", (6, 10), seed=3)
    inputs = [
        base[::2],
        base[:, ::3],
        base.T,
        np.asfortranarray(base),
        base[::-1, 1:7:2],
        np.arange(40, dtype=np.int16)[::4],
        _sample("float64", (5, 4, 3), seed=4).transpose(2, 0, 1),
    ]
    for host in inputs:
        assert not host.flags.c_contiguous
        got = remote.array(host).numpy()
        assert got.flags.c_contiguous
        _assert_same_array(got, np.ascontiguousarray(host))


@pytest.mark.parametrize("spelling", [">f4", ">i2", ">u8", ">f8", "<f4"])
def test_non_native_byte_order(remote: farm.RemoteSession, spelling: str) -> None:
    native = _sample(np.dtype(spelling).newbyteorder("=").name, (2, 7), seed=5)
    swapped = native.astype(spelling)
    got = remote.array(swapped).numpy()
    assert got.dtype == native.dtype and got.dtype.isnative
    _assert_same_array(got, native)
    got = remote.array(swapped[:, ::2]).numpy()  # non-native and non-contiguous at once
    _assert_same_array(got, np.ascontiguousarray(native[:, ::2]))


def test_array_from_python_values(remote: farm.RemoteSession) -> None:
    _assert_same_array(remote.array([1, 2, 3]).numpy(), np.array([1, 2, 3]))
    _assert_same_array(remote.array([[1.5], [2.5]]).numpy(), np.array([[1.5], [2.5]]))
    _assert_same_array(remote.array(np.float32(2.5)).numpy(), np.array(2.5, np.float32))
    _assert_same_array(remote.array(True).numpy(), np.array(True))


def test_copyfrom(remote: farm.RemoteSession) -> None:
    arr = remote.empty((4, 5), "int32")
    new = _sample("int32", (4, 5), seed=6)
    assert arr.copyfrom(new) is arr
    _assert_same_array(arr.numpy(), new)
    arr.copyfrom(np.asfortranarray(new * 2))
    _assert_same_array(arr.numpy(), new * 2)
    arr.copyfrom((new * 3).astype(">i4"))
    _assert_same_array(arr.numpy(), new * 3)
    with pytest.raises(farm.ArgumentError, match="shape"):
        arr.copyfrom(np.zeros((5, 4), np.int32))
    with pytest.raises(farm.ArgumentError):
        arr.copyfrom(np.zeros((4, 5), np.int64))
    _assert_same_array(arr.numpy(), new * 3)
    empty = remote.empty(0, "float64")
    empty.copyfrom(np.zeros(0))
    assert empty.numpy().shape == (0,)


def test_unsupported_dtypes_are_refused(remote: farm.RemoteSession) -> None:
    for bad in [np.zeros(3, np.complex64), np.array([object(), 1], dtype=object), np.array(["ab"])]:
        with pytest.raises(farm.ArgumentError, match="not supported"):
            remote.array(bad)
    for dtype in ["complex64", object, "U3", "datetime64[s]"]:
        with pytest.raises(farm.ArgumentError, match="not supported"):
            remote.empty(3, dtype)
    arr = remote.empty(2, "float32")
    with pytest.raises(farm.ArgumentError, match="not supported"):
        arr.copyfrom(np.zeros(2, np.complex64))
    remote.ping()


def test_reverse_bytes_through_void_pointer(linalg: farm.RemoteModule, remote: farm.RemoteSession) -> None:
    reverse_bytes = linalg.get_function("reverse_bytes", REVERSE_SIG)
    host = np.arange(-500, 501, 7, dtype=np.int16)
    arr = remote.array(host)
    reverse_bytes(arr, host.nbytes)
    expected = np.frombuffer(host.tobytes()[::-1], dtype=np.int16)
    _assert_same_array(arr.numpy(), expected)
    np.testing.assert_array_equal(expected, host[::-1].byteswap())
    other = remote.array(np.arange(6, dtype=np.float64))  # void * takes any dtype
    reverse_bytes(other, 48)
    _assert_same_array(other.numpy(), np.frombuffer(np.arange(6, dtype=np.float64).tobytes()[::-1], np.float64))


def test_cpu_device(remote: farm.RemoteSession) -> None:
    dev = remote.cpu()
    assert dev == remote.cpu(0) and dev != remote.cpu(1)
    assert hash(dev) == hash(remote.cpu())
    text = repr(dev)
    assert "cpu(0)" in text and "127.0.0.1" in text
    host = _sample("float32", (3, 4), seed=8)
    arr = dev.array(host)
    _assert_same_array(arr.numpy(), host)
    assert arr.device == dev
    zeros = dev.empty((2, 2), "int64")
    _assert_same_array(zeros.numpy(), np.zeros((2, 2), np.int64))
    dev.sync()
    assert "RemoteArray" in repr(arr) and "(3, 4)" in repr(arr) and "float32" in repr(arr)


def test_dropped_arrays_are_freed_on_the_board(remote: farm.RemoteSession) -> None:
    block = np.random.default_rng(9).integers(0, 256, size=MIB, dtype=np.uint8)
    for _ in range(5):  # warm up buffers on both sides
        remote.array(block)
    remote.ping()
    before = _session_rss_kib(remote)

    for index in range(200):
        arr = remote.array(block)
        assert arr.nbytes == MIB, index
    del arr
    remote.ping()  # carries the last release
    after = _session_rss_kib(remote)
    assert after - before < 48 * 1024, "the board grew by %d KiB for 200 MiB of dropped arrays" % (after - before)

    # The measurement can see arrays that stay alive, and their release.
    kept: List[farm.RemoteArray] = [remote.array(block) for _ in range(64)]
    while_kept = _session_rss_kib(remote)
    assert while_kept - before > 48 * 1024, "64 live MiB arrays only grew the board by %d KiB" % (while_kept - before)
    kept.clear()
    remote.ping()
    released = _session_rss_kib(remote)
    assert while_kept - released > 48 * 1024
    assert released - before < 48 * 1024


def test_many_arrays_dropped_at_once(remote: farm.RemoteSession) -> None:
    baseline = remote.system_info()["live_arrays"]
    kept = [remote.empty(16, "uint8") for _ in range(12000)]
    assert remote.system_info()["live_arrays"] == baseline + 12000
    pid = remote.system_info()["pid"]
    del kept  # the ids go to the board in batches with the next requests
    for _ in range(12000 // farm.client.session.MAX_RELEASE + 1):
        remote.ping()
    assert remote.system_info()["live_arrays"] == baseline
    _assert_usable(remote, pid)


def test_dropping_arrays_of_a_closed_session(shared_board) -> None:
    host, port = shared_board.address
    with farm.connect(host, port, key="test") as session:
        arrays = [session.array(np.ones(1000, np.float32)) for _ in range(3)]
    assert session.closed
    del arrays  # must neither raise (in the finalizer) nor try to send anything
    with farm.connect(host, port, key="test") as session:
        session.ping()


# --- run ---------------------------------------------------------------------------


@pytest.mark.board_servers(NATIVE_CHECKED)
def test_run_on_a_board_without_python_says_so(remote: farm.RemoteSession) -> None:
    pid = remote.system_info()["pid"]
    with pytest.raises(farm.RemoteError, match="this board has no Python") as info:
        remote.run(lambda: 1)
    assert info.value.remote_type == "FarmError" and not isinstance(info.value, farm.SessionLostError)
    _assert_usable(remote, pid)


@python_board_only
def test_run_returns_values(remote: farm.RemoteSession) -> None:
    assert remote.run(lambda: 1 + 1) == 2
    assert remote.run(pow, 2, 10) == 1024
    assert remote.run(lambda a, b=0: (a, b), "x", b=[1, 2]) == ("x", [1, 2])
    assert remote.run(lambda: None) is None
    info = remote.system_info()
    assert remote.run(os.getpid) == info["pid"]  # runs inside the session process
    assert os.path.realpath(remote.run(os.getcwd)) == os.path.realpath(info["session_dir"])
    got = remote.run(lambda: np.arange(5, dtype=np.int16) * 3)
    _assert_same_array(got, np.arange(5, dtype=np.int16) * 3)


@python_board_only
def test_run_closures_capture_host_values(remote: farm.RemoteSession) -> None:
    factor = 7
    data = [1, 2, 3]
    table = {"a": np.float64(0.5)}

    def combine(extra: int) -> list:
        return [x * factor + extra for x in data] + [table["a"]]

    assert remote.run(combine, 1) == [8, 15, 22, 0.5]
    factor = 10  # the closure sees the value at the time of the call
    assert remote.run(combine, 0) == [10, 20, 30, 0.5]


@python_board_only
def test_run_raising_reports_the_remote_traceback(remote: farm.RemoteSession) -> None:
    pid = remote.system_info()["pid"]
    marker = "marker-%s" % uuid.uuid4().hex

    def explode() -> None:
        raise ValueError("it broke: " + marker)

    with pytest.raises(farm.RemoteError) as info:
        remote.run(explode)
    error = info.value
    assert not isinstance(error, farm.SessionLostError)
    assert error.remote_type == "ValueError"
    assert marker in error.remote_traceback
    assert "Traceback" in error.remote_traceback and "explode" in error.remote_traceback
    assert marker in str(error)
    _assert_usable(remote, pid)
    assert remote.run(lambda: "alive") == "alive"


@python_board_only
def test_run_result_that_is_not_data(remote: farm.RemoteSession) -> None:
    pid = remote.system_info()["pid"]
    with pytest.raises(farm.DataError, match="an object of type function is not data") as info:
        remote.run(lambda: lambda: None)
    assert isinstance(info.value, farm.RemoteError) and not isinstance(info.value, farm.SessionLostError)
    _assert_usable(remote, pid)


@python_board_only
def test_run_trusted_result_that_cannot_be_pickled(remote: farm.RemoteSession) -> None:
    pid = remote.system_info()["pid"]
    with pytest.raises(farm.RemoteError) as info:
        remote.run_trusted(lambda: lambda: None)  # the board pickles results with plain pickle
    assert info.value.remote_type in ("PicklingError", "AttributeError")
    assert not isinstance(info.value, farm.SessionLostError)
    _assert_usable(remote, pid)


# --- session lifetime and errors -------------------------------------------------------


def test_context_manager_closes_and_frees_the_board(shared_board) -> None:
    host, port = shared_board.address
    seen_dirs = []
    for _ in range(3):
        with farm.connect(host, port, key="test") as session:
            session.upload(b"data", target="f.bin")
            session_dir = session.system_info()["session_dir"]
            seen_dirs.append(session_dir)
            with pytest.raises(farm.BoardBusyError):
                farm.connect(host, port, key="test", connect_timeout=5)
        assert session.closed
        assert "closed" in repr(session)
        assert not os.path.exists(session_dir)  # the board cleaned up before close() returned
        with pytest.raises(farm.RemoteError, match="closed"):
            session.ping()
        session.close()  # closing twice is harmless
    assert len(set(seen_dirs)) == 3
    with farm.connect(host, port, key="test") as session:  # right after: the board is free
        assert session.system_info()["key"] == "test"


def test_board_errors_keep_the_session_usable(remote: farm.RemoteSession, linalg: farm.RemoteModule) -> None:
    pid = remote.system_info()["pid"]
    remote.upload(b"x", target="adir/file")

    def fail_run() -> None:
        raise KeyError("nope")

    failures = [
        lambda: remote.download("missing"),
        lambda: remote.download("adir"),  # a directory
        lambda: remote.upload(b"x", target="adir"),  # onto a directory
        lambda: remote.remove("missing"),
        lambda: remote.listdir("adir/file"),  # not a directory
        lambda: remote.load_module("missing.so"),
        lambda: linalg.get_function("missing_symbol"),
        lambda: remote.run(fail_run),
        lambda: remote.download("../escape"),
    ]
    for index, failure in enumerate(failures):
        with pytest.raises(farm.RemoteError) as info:
            failure()
        assert not isinstance(info.value, farm.SessionLostError), index
        assert info.value.remote_type, index
        _assert_usable(remote, pid)
    assert remote.download("adir/file") == b"x"
    assert linalg["add_ints"](20, 22) == 42


@python_board_only
def test_unprintable_exception_from_run_keeps_the_session(remote: farm.RemoteSession) -> None:
    pid = remote.system_info()["pid"]

    class DeviceError(Exception):
        def __str__(self) -> str:
            return "device error: %s" % self.details  # never set: str() itself raises AttributeError

    def fail() -> None:
        raise DeviceError(42)

    with pytest.raises(farm.RemoteError) as info:
        remote.run(fail)
    assert not isinstance(info.value, farm.SessionLostError), str(info.value)
    assert info.value.remote_type == "DeviceError"
    _assert_usable(remote, pid)


@python_board_only
def test_huge_exception_message_from_run_keeps_the_session(remote: farm.RemoteSession) -> None:
    pid = remote.system_info()["pid"]

    def fail() -> None:
        raise ValueError("bad value: " + "x" * MIB)

    with pytest.raises(farm.RemoteError) as info:
        remote.run(fail)
    assert not isinstance(info.value, farm.SessionLostError), str(info.value)[:300]
    assert info.value.remote_type == "ValueError"
    assert "bad value: xxx" in str(info.value)
    _assert_usable(remote, pid)


def test_listdir_of_a_large_directory(remote: farm.RemoteSession) -> None:
    pid = remote.system_info()["pid"]
    count, stem = 4400, "n" * 245  # 250-byte names: about 1.1 MB of names in all

    def populate(root: Path) -> None:
        os.mkdir(root / "many")
        with open(root / "base", "wb"):
            pass
        for index in range(count):
            os.link(root / "base", root / "many" / ("%s%05d" % (stem, index)))  # cheap: no new inode

    _in_session_dir(remote, populate)
    names = remote.listdir("many")
    assert len(names) == count
    assert names == sorted("%s%05d" % (stem, index) for index in range(count))
    _assert_usable(remote, pid)
