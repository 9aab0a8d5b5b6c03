"""What one client session does on the board: files, modules, arrays, calls.

A :class:`Session` runs in the session's own child process, in its own
working directory, and serves frames until the client closes. Standard
library only; cloudpickle is imported only when the client uses ``run``.
"""

from __future__ import annotations

import ctypes
import json
import logging
import mmap
import os
import pickle
import platform
import shutil
import signal
import socket
import sys
import tempfile
import traceback
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from .. import __version__
from ..errors import ArgumentError, DataError, FarmError, PathEscapeError, ProtocolError, SkippedCallError
from ..net.transport import ConnectionClosed, FramedSocket
from ..protocol.calls import MAX_ARGS, RESULT_FRAME_SIZE, ResultFrame, decode_call, encode_result, read_call_frame
from ..protocol.framing import DEFAULT_MAX_PAYLOAD, Buffer, Frame, encode_frame
from ..protocol.ops import PICKLE_PROTOCOL, RESULT_PICKLE, Op
from ..protocol.timing import timing_options
from ..protocol.values import ADMITTED, encode_value
from ..signature import DTYPE_SIZES, Signature, c_type_sizes, parse_signature
from .elf import elf_machine, interpreter_machine
from .machine import machine_state
from .timing import FirstArray, time_function

logger = logging.getLogger("farm.session")


Reply = Tuple[Optional[dict], Buffer]


class SessionStatus:
    """What the session process is doing, in memory shared with the board daemon.

    The daemon reads it after the process died to tell the client what was
    running, and whether a reply was cut short (then no notice can follow).
    Layout: state (u8) at 0, the byte count the connection reaches when the
    reply being sent is complete (u64) at 8, activity text length (u16) at 16
    and the text from 18.
    """

    IDLE, RUNNING, SENDING, FINISHED = range(4)
    _SIZE = 4096
    _TEXT = 18

    def __init__(self) -> None:
        self._mm = mmap.mmap(-1, self._SIZE)  # anonymous and MAP_SHARED: survives fork
        self._shown: Optional[bytes] = None  # the activity text last written, by this process

    @property
    def state(self) -> int:
        return self._mm[0]

    @state.setter
    def state(self, value: int) -> None:
        self._mm[0] = value

    def running(self, activity: str) -> None:
        """Mark the session as running user code, described as ``activity``."""
        self.running_encoded(self.encode(activity))

    @classmethod
    def encode(cls, activity: str) -> bytes:
        """``activity`` as :meth:`running_encoded` takes it."""
        data = activity.encode("utf-8", "replace")[: cls._SIZE - cls._TEXT]
        return len(data).to_bytes(2, "little") + data

    def running_encoded(self, activity: bytes) -> None:
        if activity is not self._shown:  # the same function called again: its text is there already
            self._mm[16 : 16 + len(activity)] = activity
            self._shown = activity
        self._mm[0] = self.RUNNING

    def sending(self, reply_end: int) -> None:
        """Mark the session as sending a reply that ends at byte ``reply_end`` of the connection."""
        self._mm[8:16] = reply_end.to_bytes(8, "little")
        self._mm[0] = self.SENDING

    @property
    def reply_end(self) -> int:
        return int.from_bytes(self._mm[8:16], "little")

    @property
    def activity(self) -> str:
        """What the session was doing: the running activity, sending a reply, or waiting for a request."""
        if self._mm[0] == self.SENDING:
            return "sending a reply"
        if self._mm[0] != self.RUNNING:
            return "waiting for a request"
        length = int.from_bytes(self._mm[16:18], "little")
        return self._mm[self._TEXT : self._TEXT + length].decode("utf-8", "replace")


class _Array(NamedTuple):
    storage: memoryview  # exactly nbytes, aligned (see _new_storage)
    address: int
    shape: Tuple[int, ...]
    dtype: str
    nbytes: int


class _Function(NamedTuple):
    cfunc: Any
    activity: bytes  # "running vadd() from libvadd.so", encoded for SessionStatus
    signature: Optional[Signature]
    label: str  # "vadd() from libvadd.so"
    settled_tags: Optional[str]  # argument tags whose values need no check or conversion (see _settled_tags)


def _settled_tags(signature: Optional[Signature]) -> Optional[str]:
    """The argument tags of a call whose values the signature takes as they come: its usual tags when it has no
    pointer (arrays are looked up) and no integer narrower than int64 (values are range-checked); else None."""
    if signature is None or any(param.type.kind == "pointer" for param in signature.params):
        return None
    if any(low != -(1 << 63) or high != 1 << 63 for _index, low, high in signature.int_ranges):
        return None
    return signature.usual_tags


def _field(meta: dict, name: str, kind: Any, default: Any = ...) -> Any:
    """A request field of the expected type, or a :class:`ProtocolError` naming it."""
    if name not in meta:
        if default is ...:
            raise ProtocolError("request is missing the field %r" % name)
        return default
    value = meta[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ProtocolError("request field %r has type %s" % (name, type(value).__name__))
    return value


#: Arrays at least this big get their own anonymous mapping, returned to the system when freed.
MMAP_THRESHOLD = 256 << 10
#: Array storage is aligned for any SIMD load.
ALIGNMENT = 64
_NO_ARRAYS = (None,) * MAX_ARGS
# Plain ints are quicker to reach than enum members on the call path.
_ARRAY_NEW, _ARRAY_WRITE, _UPLOAD, _RESULT = int(Op.ARRAY_NEW), int(Op.ARRAY_WRITE), int(Op.UPLOAD), int(Op.RESULT)
# Operations that record what they run themselves (or run nothing worth naming).
_OWN_ACTIVITY = (int(Op.CALL), int(Op.RUN), int(Op.PING), int(Op.TIME), int(Op.PIPELINED_CALL))
_RTLD_LOCAL = getattr(os, "RTLD_LOCAL", 0)
#: Replies up to this size fit an empty socket buffer, so sending one cannot be cut short.
ATOMIC_REPLY = 4096
#: Longest error message or traceback sent back, in characters; the middle of longer ones is cut.
#: Two of them fit the metadata limit even when every character takes a 12-byte JSON escape.
MAX_ERROR_TEXT = 32 << 10
#: What a session's directory may hold by default, in MB (the board's ``--session-quota``).
DEFAULT_SESSION_QUOTA_MB = 1024
#: How many files and directories a session's directory may hold by default (the board's ``--session-quota-files``).
DEFAULT_SESSION_QUOTA_FILES = 100000
MB = 1 << 20


def _address_of(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def _new_storage(nbytes: int) -> Tuple[memoryview, int]:
    """Zero-filled array storage: a writable view of exactly ``nbytes`` and its aligned address."""
    if nbytes >= MMAP_THRESHOLD:
        # Private, not the default shared mapping: that one gets no huge pages and faults in
        # every 4 KiB page, which costs more than receiving the array.
        storage = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # page aligned
        if hasattr(mmap, "MADV_HUGEPAGE"):
            storage.madvise(mmap.MADV_HUGEPAGE)
        view = memoryview(storage)
        return view, _address_of(view)
    owner = (ctypes.c_char * (nbytes + ALIGNMENT))()
    offset = -ctypes.addressof(owner) % ALIGNMENT
    return memoryview(owner).cast("B")[offset : offset + nbytes], ctypes.addressof(owner) + offset


class QuotaError(FarmError):
    """An upload would take the session's directory over its quota; the session goes on."""


class Usage(NamedTuple):
    """What a directory holds: bytes (apparent sizes, each inode once) and entries (files, directories, links)."""

    size: int
    entries: int


def directory_usage(path: str, max_entries: int = 0) -> Usage:
    """What the files below ``path`` hold, links not followed.

    With ``max_entries``, counting stops at the first entry past it (so a
    directory of millions of files costs no more than ``max_entries`` to
    check). Files and directories that vanish or cannot be read while it
    counts are skipped.
    """
    total = entries = 0
    linked = set()
    directories = [path]
    while directories:
        try:
            listing = os.scandir(directories.pop())
        except OSError:
            continue
        with listing:
            for entry in listing:
                entries += 1
                if max_entries and entries > max_entries:
                    return Usage(total, entries)
                try:
                    if entry.is_dir(follow_symlinks=False):
                        directories.append(entry.path)
                        continue
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if info.st_nlink > 1:
                    if (info.st_dev, info.st_ino) in linked:
                        continue
                    linked.add((info.st_dev, info.st_ino))
                total += info.st_size
    return Usage(total, entries)


def megabytes(size: int) -> str:
    """``size`` bytes in MB, for messages: ``"3.5"``, ``"1024"``."""
    return "%.1f" % (size / MB) if size % MB else "%d" % (size // MB)


def over_quota_message(size: int, quota: int) -> str:
    """What the board tells a client whose session's directory outgrew its quota."""
    return "the session's directory holds %s MB, over its quota of %s MB" % (megabytes(size), megabytes(quota))


def over_files_message(quota: int) -> str:
    """What the board tells a client whose session's directory holds more entries than its quota allows."""
    return "the session's directory holds more than its quota of %d files and directories" % quota


def limit_file_size(limit: int) -> None:
    """No file this process, or what it starts, writes may grow past ``limit`` bytes: such writes fail with EFBIG.

    SIGXFSZ, which would kill the writer, is ignored (Python ignores it anyway; exec keeps it ignored).
    """
    try:
        import resource
    except ImportError:  # not a Unix: the directory's total is still checked by the daemon
        return
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))


def _clip(text: str, limit: int = MAX_ERROR_TEXT) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return "%s\n[... %d characters cut ...]\n%s" % (text[:half], len(text) - 2 * half, text[-half:])


class Session:
    """Serves one client's requests over ``conn`` with ``root`` as its directory."""

    def __init__(
        self,
        conn: FramedSocket,
        root: str,
        key: str = "",
        status: Optional[SessionStatus] = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        received: bytes = b"",
        bytes_sent: int = 0,
        name: str = "",
        quota: int = 0,
    ) -> None:
        self.conn = conn
        self.name = name
        self.quota = quota  # bytes the session's directory may hold (0: no limit)
        self._refused_uploads: Dict[int, str] = {}  # id of a refused upload's buffer -> why
        self._received = received  # bytes that came with the handshake: the first frames
        self._result = ResultFrame()  # the reply of a call the fast path answers
        self._bytes_sent = bytes_sent  # on this connection so far, the handshake reply included
        self.root = os.path.realpath(root)
        self.key = key
        self.status = status or SessionStatus()
        self.max_payload = max_payload
        self._arrays: Dict[int, _Array] = {}
        self._incoming_files: Dict[int, str] = {}  # id of an upload's map -> its temporary file
        self._loaded_files: Dict[str, Tuple[int, int, int, int]] = {}  # path -> identity when loaded
        self._modules: Dict[int, Tuple[Any, str]] = {}
        self._functions: Dict[int, _Function] = {}
        self._next_id = 1
        self._pipeline_failed = ""  # what failed in the current pipeline: its later calls are not run
        self._handlers: Dict[int, Callable[[Frame], Reply]] = {
            Op.PING: lambda frame: (None, b""),
            Op.SYSTEM_INFO: self._system_info,
            Op.UPLOAD: self._upload,
            Op.DOWNLOAD: self._download,
            Op.REMOVE: self._remove,
            Op.LISTDIR: self._listdir,
            Op.LOAD_MODULE: self._load_module,
            Op.GET_FUNCTION: self._get_function,
            Op.CALL: self._call,
            Op.ARRAY_NEW: self._array_new,
            Op.ARRAY_EMPTY: self._array_empty,
            Op.ARRAY_READ: self._array_read,
            Op.ARRAY_WRITE: self._array_write,
            Op.RUN: self._run,
            Op.TIME: self._time,
            Op.PIPELINE: self._pipeline,
            Op.PIPELINED_CALL: self._pipelined_call,
        }
        conn.reader.allocate = self._allocate
        conn.reader.allocate_for = (_ARRAY_NEW, _ARRAY_WRITE, _UPLOAD)
        conn.reader.max_payload = max_payload

    # --- the request loop -------------------------------------------------

    def serve(self) -> None:
        """Answer requests until the client closes, leaves, or breaks the protocol.

        A read that brings exactly one CALL frame without metadata, as a client's call does, is answered on a
        fast path (:meth:`_answer_call`); the frame reader takes anything else, and :meth:`handle` answers it.
        """
        if self.quota:
            limit_file_size(self.quota)
        try:
            while True:
                try:
                    frame = self._next_request()
                except ProtocolError as exc:
                    # Frames that arrived whole before the bad one still get their answers.
                    queued = self.conn.reader.next_frame()
                    while queued is not None:
                        if not self.handle(queued):
                            return
                        queued = self.conn.reader.next_frame()
                    logger.warning("closing session: %s", exc)
                    self._reply_error(self.conn.reader.request_id, exc, with_traceback=False)
                    return
                if frame is not None and not self.handle(frame):
                    return
        except ConnectionError as exc:  # ConnectionClosed too: the client has gone
            logger.info("the client left: %s", exc)

    def _next_request(self) -> Optional[Frame]:
        """The next request's frame; None for a call that the fast path answered already."""
        reader = self.conn.reader
        if self._received:
            received, self._received = self._received, b""
            reader.push(received)
        elif reader.empty:
            buffer = reader.writable()
            count = self.conn.sock.recv_into(buffer)
            if not count:
                raise ConnectionClosed(False)
            call = read_call_frame(buffer, count)
            if call is not None:
                self._answer_call(*call)  # the reader is left empty: the bytes were the call
                return None
            frame = reader.received(count)
            if frame is not None:
                return frame
        return self.conn.recv()

    def handle(self, frame: Frame) -> bool:
        """Answer one request; False when the session must end."""
        handler = self._handlers.get(frame.op)
        if handler is None:
            if frame.op == Op.CLOSE:
                self._send(Op.RESULT, frame.request_id)
                return False
            logger.warning("closing session: unknown operation %d", frame.op)
            self._reply_error(frame.request_id, ProtocolError("unknown operation %d" % frame.op), False)
            return False
        try:
            if frame.op not in _OWN_ACTIVITY:
                self.status.running("handling %s %s" % (Op(frame.op).name, frame.meta.get("name", "")))
            if "release" in frame.meta:
                self._release(frame.meta["release"])
            meta, payload = handler(frame)
        except ProtocolError as exc:
            self.status.state = SessionStatus.IDLE
            logger.warning("closing session: %s", exc)
            self._reply_error(frame.request_id, exc, with_traceback=False)
            return False
        except Exception as exc:
            self.status.state = SessionStatus.IDLE
            self._reply_error(frame.request_id, exc)
            return True
        self.status.state = SessionStatus.IDLE
        self._send(_RESULT, frame.request_id, meta, payload)
        return True

    def _answer_call(self, request_id: int, function_id: int, tags: str, values: Sequence[Any]) -> None:
        """Answer a CALL the fast path read: as :meth:`handle` and :meth:`_call` do, with the reply built in place."""
        try:
            function, arguments = self._call_values(function_id, tags, values)
            self.status.running_encoded(function.activity)
            result = function.cfunc(*arguments)
        except Exception as exc:
            self.status.state = SessionStatus.IDLE
            self._reply_error(request_id, exc)
            return
        self.status.state = SessionStatus.IDLE
        self._bytes_sent += RESULT_FRAME_SIZE
        self.conn.sock.sendall(self._result.fill(request_id, result))

    def _send(self, op: int, request_id: int, meta: Optional[dict] = None, payload: Buffer = b"") -> None:
        parts = encode_frame(op, request_id, meta, payload)
        size = len(parts[0]) + (memoryview(parts[1]).nbytes if len(parts) > 1 else 0)
        self._bytes_sent += size
        if size <= ATOMIC_REPLY:  # goes out whole or not at all: the client reads every reply
            self.conn.send_parts(parts)
            return
        self.status.sending(self._bytes_sent)
        self.conn.send_parts(parts)
        self.status.state = SessionStatus.IDLE

    def _reply_error(self, request_id: int, exc: BaseException, with_traceback: bool = True) -> None:
        try:
            message = str(exc)
        except Exception:
            message = "(the %s could not be turned into text)" % type(exc).__name__
        meta = {
            "type": type(exc).__name__,
            "message": _clip(message),
            "traceback": _clip(traceback.format_exc()) if with_traceback and not isinstance(exc, FarmError) else "",
        }
        try:
            self._send(Op.ERROR, request_id, meta)
        except (OSError, ProtocolError) as exc:
            logger.info("could not send an error to the client: %s", exc)

    def _allocate(self, op: int, meta: dict, nbytes: int) -> Optional[Buffer]:
        """Where an UPLOAD, ARRAY_NEW or ARRAY_WRITE payload lands (the reader's own buffer for the rest)."""
        try:
            if op == _UPLOAD:  # straight into a file in the session directory, not into memory
                refusal = self._quota_refusal(meta, nbytes)
                if refusal:  # received into memory and dropped: the session goes on
                    storage = _new_storage(nbytes)[0]
                    self._refused_uploads[id(storage.obj)] = refusal
                    return storage
                path, contents = self._new_incoming_file(nbytes)
                self._incoming_files[id(contents)] = path
                return contents
            if op == _ARRAY_NEW:
                return _new_storage(nbytes)[0]
            target_id = meta.get("id")  # ARRAY_WRITE: into the array itself when the sizes match
            if isinstance(target_id, int) and target_id in self._arrays:
                target = self._arrays[target_id]
                if target.nbytes == nbytes:
                    return target.storage
            return None
        except (MemoryError, OSError, ValueError, OverflowError) as exc:
            raise ProtocolError("the board cannot allocate %d bytes for a payload: %s" % (nbytes, exc)) from None

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def _release(self, ids: Any) -> None:
        if not isinstance(ids, list) or not all(type(array_id) is int for array_id in ids):
            raise ProtocolError("request field 'release' is not a list of array ids")
        for array_id in ids:
            self._arrays.pop(array_id, None)

    # --- files --------------------------------------------------------------

    def resolve(self, name: Any, follow: bool = True) -> str:
        """The absolute path of ``name`` inside the session directory, or :class:`PathEscapeError`."""
        if not isinstance(name, str) or not name or "\0" in name:
            raise PathEscapeError("file name %r is not a non-empty string" % (name,))
        if os.path.isabs(name):
            raise PathEscapeError("%r is an absolute path; names are relative to the session directory" % name)
        path = os.path.normpath(os.path.join(self.root, name))
        if follow:
            path = os.path.realpath(path)
        else:
            path = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        if os.path.commonpath([path, self.root]) != self.root:
            raise PathEscapeError("%r points outside the session directory" % name)
        return path

    def _quota_refusal(self, meta: dict, nbytes: int) -> str:
        """Why an upload of ``nbytes`` would take the directory over its quota ("" if it would not)."""
        if not self.quota or not nbytes:
            return ""
        name = meta.get("name")
        try:
            replaced = os.lstat(self.resolve(name)).st_size  # an upload replaces the file of its name
        except (OSError, PathEscapeError):
            replaced = 0
        held = directory_usage(self.root).size
        if held - replaced + nbytes <= self.quota:
            return ""
        return "uploading %r (%d bytes) would take the session's directory to %s MB, over its quota of %s MB" % (
            name,
            nbytes,
            megabytes(held - replaced + nbytes),
            megabytes(self.quota),
        )

    def _upload(self, frame: Frame) -> Reply:
        key = id(getattr(frame.payload, "obj", None))
        if key in self._refused_uploads:
            raise QuotaError(self._refused_uploads.pop(key))
        incoming = self._incoming_files.pop(key, None)
        try:
            name = _field(frame.meta, "name", str)
            path = self.resolve(name)
            if path == self.root:
                raise PathEscapeError("%r names the session directory itself" % name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if incoming is None:  # an empty file: no payload arrived
                incoming = self._new_incoming_file(0)[0]
            # A new file, not the old one rewritten: a library loaded from the old file keeps its pages.
            os.replace(incoming, path)
        except BaseException:
            if incoming is not None:
                os.unlink(incoming)
            raise
        return {"name": os.path.relpath(path, self.root), "size": len(frame.payload)}, b""

    def _new_incoming_file(self, nbytes: int) -> Tuple[str, Any]:
        """A temporary file of ``nbytes`` in the session directory, and a writable map of it (None if empty)."""
        handle, path = tempfile.mkstemp(prefix=".upload-", dir=self.root)
        try:
            if not nbytes:
                return path, None
            os.ftruncate(handle, nbytes)
            return path, mmap.mmap(handle, nbytes)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(handle)

    def _download(self, frame: Frame) -> Reply:
        path = self.resolve(_field(frame.meta, "name", str))
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > self.max_payload:
                raise FarmError("%s is %d bytes, more than the message limit of %d" % (path, size, self.max_payload))
            # the view keeps the mapping until the reply is sent
            contents = memoryview(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)) if size else b""
        return {"size": size}, contents

    def _remove(self, frame: Frame) -> Reply:
        name = _field(frame.meta, "name", str)
        path = self.resolve(name, follow=False)
        if path == self.root:
            raise PathEscapeError("%r names the session directory itself" % name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
        return None, b""

    def _listdir(self, frame: Frame) -> Reply:
        path = self.resolve(_field(frame.meta, "name", str, "."))
        return None, json.dumps(sorted(os.listdir(path))).encode("utf-8")

    def _system_info(self, frame: Frame) -> Reply:
        info = {
            "machine": platform.machine(),
            "os": platform.system(),
            "os_release": platform.release(),
            "python": platform.python_version(),
            "python_implementation": platform.python_implementation(),
            "server": "python",
            "hostname": socket.gethostname(),
            "key": self.key,
            "name": self.name,
            "server_version": __version__,
            "byteorder": sys.byteorder,
            "cpu_count": os.cpu_count(),
            "session_dir": self.root,
            "pid": os.getpid(),
            "c_type_sizes": c_type_sizes(),
            "live_arrays": len(self._arrays),
            "state": machine_state(),
        }
        return info, b""

    # --- native code --------------------------------------------------------

    def _load_module(self, frame: Frame) -> Reply:
        name = _field(frame.meta, "name", str)
        path = self.resolve(name)
        built_for, board = elf_machine(path), interpreter_machine()
        if built_for and board and built_for != board:
            raise FarmError("%s is built for %s, but this board runs %s code" % (name, built_for, board))
        info = os.stat(path)
        identity = (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)
        if self._loaded_files.get(path, identity) == identity:
            library = ctypes.CDLL(path, mode=_RTLD_LOCAL)
        else:  # the file changed since it was loaded, and dlopen would hand back the old code for its path
            library = self._load_fresh(path)
        self._loaded_files[path] = identity
        module_id = self._new_id()
        self._modules[module_id] = (library, name)
        return {"id": module_id}, b""

    def _load_fresh(self, path: str) -> Any:
        """Load ``path`` under a name never loaded before (a temporary hard link, or a copy)."""
        directory = tempfile.mkdtemp(prefix=".load-", dir=self.root)
        fresh = os.path.join(directory, os.path.basename(path))
        try:
            try:
                os.link(path, fresh)
            except OSError:
                shutil.copyfile(path, fresh)
            return ctypes.CDLL(fresh, mode=_RTLD_LOCAL)
        finally:
            shutil.rmtree(directory, ignore_errors=True)  # the loaded pages stay mapped

    def _get_function(self, frame: Frame) -> Reply:
        module_id = _field(frame.meta, "module", int)
        name = _field(frame.meta, "name", str)
        text = _field(frame.meta, "signature", str, "")
        if module_id not in self._modules:
            raise FarmError("module %d is not loaded in this session" % module_id)
        library, module_name = self._modules[module_id]
        try:
            cfunc = library[name]
        except AttributeError:
            raise FarmError("%s has no function %r" % (module_name, name)) from None
        signature = parse_signature(text) if text else None
        if signature is not None:
            cfunc.argtypes = [param.type.ctype for param in signature.params]
            cfunc.restype = signature.restype.ctype
        function_id = self._new_id()
        label = "%s() from %s" % (name, module_name)
        activity = SessionStatus.encode("running " + label)
        self._functions[function_id] = _Function(cfunc, activity, signature, label, _settled_tags(signature))
        return {"id": function_id}, b""

    def _call(self, frame: Frame) -> Reply:
        function, values = self._call_arguments(frame.payload)
        self.status.running_encoded(function.activity)
        return None, encode_result(function.cfunc(*values))

    def _pipeline(self, frame: Frame) -> Reply:
        self._pipeline_failed = ""
        return None, b""

    def _pipelined_call(self, frame: Frame) -> Reply:
        """A CALL of the current pipeline: not run once an earlier one failed."""
        if self._pipeline_failed:
            raise SkippedCallError("not run: %s, earlier in this pipeline, failed" % self._pipeline_failed)
        try:
            return self._call(frame)
        except Exception:
            function = self._functions.get(int.from_bytes(bytes(frame.payload[:4]), "little"))
            self._pipeline_failed = "%s (request %d)" % (function.label if function else "a call", frame.request_id)
            raise

    def _call_arguments(self, payload: Buffer) -> Tuple[_Function, Sequence[Any]]:
        """The function a CALL payload names and the values to call it with, checked against its signature."""
        return self._call_values(*decode_call(payload))

    def _call_values(self, function_id: int, tags: str, decoded: Sequence[Any]) -> Tuple[_Function, Sequence[Any]]:
        """Function ``function_id`` and the values to call it with (``decoded``, tagged ``tags``), checked."""
        values: Sequence[Any] = decoded
        dtypes: Sequence[Optional[str]]
        function = self._functions.get(function_id)
        if function is None:
            raise FarmError("function %d was not looked up in this session" % function_id)
        if tags == function.settled_tags:
            return function, decoded
        if "a" in tags or "n" in tags:
            values, dtypes = self._pointer_arguments(tags, values)
        else:
            dtypes = _NO_ARRAYS[: len(tags)]
        if function.signature is not None:
            function.signature.check(tags, dtypes, values)
        else:
            values = [_default_argument(index, tag, value) for index, (tag, value) in enumerate(zip(tags, values))]
        return function, values

    def _time(self, frame: Frame) -> Reply:
        asked = {name: value for name, value in frame.meta.items() if name != "release"}  # handled already
        options = timing_options(asked, max_flush_bytes=self.max_payload)
        function_id, tags, decoded = decode_call(frame.payload)
        function, values = self._call_values(function_id, tags, decoded)
        first = None
        if tags[:1] == "a":
            array = self._arrays[decoded[0]]
            first = FirstArray(array.address, array.nbytes)
        self.status.running("timing " + function.label)
        return time_function(function.cfunc, values, options, first), b""

    def _pointer_arguments(self, tags: str, values: Sequence[Any]) -> Tuple[List[Any], List[Optional[str]]]:
        """Call values with arrays replaced by their addresses (NULLs by None), and each argument's dtype."""
        resolved = list(values)
        dtypes: List[Optional[str]] = [None] * len(resolved)
        for index, tag in enumerate(tags):
            if tag == "a":
                array = self._arrays.get(resolved[index])
                if array is None:
                    raise ArgumentError(
                        "argument %d is an array that was freed or is not of this session" % (index + 1)
                    )
                dtypes[index], resolved[index] = array.dtype, array.address
            elif tag == "n":
                resolved[index] = None
        return resolved, dtypes

    # --- arrays -------------------------------------------------------------

    def _array_spec(self, meta: dict) -> Tuple[Tuple[int, ...], str, int]:
        shape = _field(meta, "shape", list)
        dtype = _field(meta, "dtype", str)
        if dtype not in DTYPE_SIZES:
            raise ProtocolError("unsupported dtype %r" % dtype)
        if not all(isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in shape):
            raise ProtocolError("array shape %r is not a list of non-negative integers" % (shape,))
        nbytes = DTYPE_SIZES[dtype]
        for dim in shape:
            nbytes *= dim
        if nbytes > self.max_payload:
            raise FarmError("an array of %d bytes exceeds the board's limit of %d" % (nbytes, self.max_payload))
        return tuple(shape), dtype, nbytes

    def _store(self, storage: memoryview, address: int, shape: Tuple[int, ...], dtype: str) -> Reply:
        array_id = self._new_id()
        self._arrays[array_id] = _Array(storage, address, shape, dtype, len(storage))
        return {"id": array_id}, b""

    def _array_new(self, frame: Frame) -> Reply:
        shape, dtype, nbytes = self._array_spec(frame.meta)
        if len(frame.payload) != nbytes:
            raise ProtocolError(
                "array of shape %s %s needs %d bytes, got %d" % (shape, dtype, nbytes, len(frame.payload))
            )
        if not nbytes:
            return self._store(*_new_storage(0), shape, dtype)
        storage = memoryview(frame.payload)  # the session's reader placed it in a buffer of its own
        return self._store(storage, _address_of(storage), shape, dtype)

    def _array_empty(self, frame: Frame) -> Reply:
        shape, dtype, nbytes = self._array_spec(frame.meta)
        return self._store(*_new_storage(nbytes), shape, dtype)

    def _array(self, meta: dict) -> _Array:
        array_id = _field(meta, "id", int)
        array = self._arrays.get(array_id)
        if array is None:
            raise FarmError("array %d was freed or is not of this session" % array_id)
        return array

    def _array_read(self, frame: Frame) -> Reply:
        array = self._array(frame.meta)
        return None, array.storage

    def _array_write(self, frame: Frame) -> Reply:
        array = self._array(frame.meta)
        if len(frame.payload) != array.nbytes:
            raise ArgumentError(
                "array %d holds %d bytes, got %d" % (frame.meta["id"], array.nbytes, len(frame.payload))
            )
        received_in_place = isinstance(frame.payload, memoryview) and _address_of(frame.payload) == array.address
        if array.nbytes and not received_in_place:
            array.storage[:] = frame.payload
        return None, b""

    # --- Python -------------------------------------------------------------

    def _run(self, frame: Frame) -> Reply:
        encoding = _field(frame.meta, "result", str, "")
        if encoding not in ("", RESULT_PICKLE):
            raise ProtocolError("RUN asks for its result as %r, not as data or %r" % (encoding[:100], RESULT_PICKLE))
        try:
            import cloudpickle  # noqa: F401  (its pickles refer to it)
        except ImportError as exc:
            raise FarmError(
                "run() needs cloudpickle on the board, and this board's Python cannot import it (%s); "
                "install it there or use a packed server that bundles it" % exc
            ) from None
        function, args, kwargs = pickle.loads(frame.payload)
        name = getattr(function, "__name__", "a function")
        self.status.running("running %s()" % name)
        try:
            result = function(*args, **kwargs)
        except SystemExit as exc:
            raise FarmError("%s() called sys.exit(%r); the session goes on" % (name, exc.code)) from None
        if encoding == RESULT_PICKLE:  # the client chose run_trusted()
            return {"result": RESULT_PICKLE}, pickle.dumps(result, protocol=PICKLE_PROTOCOL)
        try:
            return None, encode_value(result, self.max_payload)
        except DataError as exc:
            raise DataError(
                "%s() returned a value that run() does not carry: %s. run() returns data only (%s); return data, "
                "or call run_trusted() to have the result pickled, which lets the board run code on the host"
                % (name, exc, ADMITTED)
            ) from None


def _default_argument(index: int, tag: str, value: Any) -> Any:
    """ctypes values for a call without a signature: pointers, C ``int`` and ``double``."""
    if tag in "an":
        return ctypes.c_void_p(value)
    if tag == "f":
        return ctypes.c_double(value)
    if not -(1 << 31) <= value < (1 << 31):
        raise ArgumentError(
            "argument %d is %d, which does not fit a C int; give the function a signature" % (index + 1, value)
        )
    return value
