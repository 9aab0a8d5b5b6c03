"""The boards one test holds: which key it runs on, queueing for a board, releasing and recording it."""

from __future__ import annotations

import getpass
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import pytest

from farm.client.tracker import NoBoardError, TrackerClient, TrackerError
from farm.errors import FarmError

from .options import Settings
from .report import Hold
from .stack import Farm

MARKER = "device"
#: The parameter (and fixture) that carries a test's key when ``device(keys=...)`` parametrizes it.
KEY_PARAM = "device_key"
#: ``device(keys=ALL_KEYS)``: one instance of the test per key of the farm.
ALL_KEYS = "all"


@dataclass(frozen=True)
class DeviceMark:
    """A checked ``@pytest.mark.device``: one ``key``, or ``keys`` to run the test on (a list, or every key)."""

    key: Optional[str] = None
    keys: Optional[Union[str, Tuple[str, ...]]] = None


def device_mark(node: Union[pytest.Item, Any], nodeid: str) -> Optional[DeviceMark]:
    """The closest ``device`` marker of a test (or its definition), checked; UsageError if malformed."""
    marker = node.get_closest_marker(MARKER)
    if marker is None:
        return None
    args, kwargs = marker.args, marker.kwargs
    if len(args) == 1 and not kwargs and isinstance(args[0], str):
        return DeviceMark(key=args[0])
    if not args and set(kwargs) == {"key"} and isinstance(kwargs["key"], str):
        return DeviceMark(key=kwargs["key"])
    if not args and set(kwargs) == {"keys"}:
        keys = kwargs["keys"]
        if keys == ALL_KEYS:
            return DeviceMark(keys=ALL_KEYS)
        if isinstance(keys, (list, tuple)) and keys and all(isinstance(key, str) and key for key in keys):
            return DeviceMark(keys=tuple(keys))
    raise pytest.UsageError(
        "%s: @pytest.mark.device takes one key, as device('rasp4') or device(key='rasp4'), or the keys to run on, "
        "as device(keys=['rasp4', 'jetson']) or device(keys='all'); got args %r kwargs %r" % (nodeid, args, kwargs)
    )


def marker_key(item: pytest.Item) -> Optional[str]:
    """The key the test's marker gives it: its ``device(keys=...)`` parameter, else ``device(KEY)``."""
    callspec = getattr(item, "callspec", None)
    if callspec is not None and KEY_PARAM in callspec.params:
        return str(callspec.params[KEY_PARAM])
    mark = device_mark(item, item.nodeid)
    return mark.key if mark is not None else None


def key_of_test(item: pytest.Item, settings: Settings, farm: Farm) -> str:
    """The test's key: its marker's, else ``--device-key``, else the farm's default key."""
    key = marker_key(item) or settings.device_key or farm.default_key
    if key is None:
        pytest.fail(
            "no board key for this test: mark it @pytest.mark.device('KEY') or pass --device-key "
            "(the farm at %s serves %s)" % (farm.tracker_address, _keys_text(farm)),
            pytrace=False,
        )
    return key


def _keys_text(farm: Farm) -> str:
    return ", ".join("%s (%d)" % item for item in sorted(farm.keys.items())) or "no keys"


def requester() -> str:
    """``login@host``, as the farm's query shows who holds a board."""
    try:
        login = getpass.getuser()
    except (KeyError, OSError):
        login = "someone"
    return "%s@%s" % (login, socket.gethostname())


@dataclass
class Lease:
    key: str
    session: Any
    tracker: TrackerClient
    queue_wait: float
    acquired: float  # time.time() when the session was ours
    address: str
    board_id: str


class Leases:
    """The boards of one test: :meth:`acquire` is the ``remote_device`` factory; :meth:`release_all` its teardown."""

    def __init__(
        self,
        item: pytest.Item,
        settings: Settings,
        farm: Farm,
        user: str,
        on_progress: Optional[Callable[[Dict[str, Any]], None]] = None,
    ) -> None:
        self.item = item
        self.settings = settings
        self.farm = farm
        self.user = user
        self.on_progress = on_progress
        self.leases: List[Lease] = []

    def acquire(
        self,
        key: Optional[str] = None,
        priority: Optional[int] = None,
        wait: Optional[float] = None,
        session_timeout: Optional[float] = None,
    ) -> Any:
        """A session on a board of ``key`` (default: the test's key), after waiting in the queue for it."""
        settings = self.settings
        key = key or key_of_test(self.item, settings, self.farm)
        if not self.farm.serves(key):
            message = "no board of key %r in the farm at %s; its keys: %s" % (
                key,
                self.farm.tracker_address,
                _keys_text(self.farm),
            )
            if settings.device_strict:
                pytest.fail(message + " (--device-strict)", pytrace=False)
            pytest.skip(message)
        wait = settings.device_wait if wait is None else wait
        tracker = _connect(self.farm)
        started = time.monotonic()
        failure = ""
        try:
            session = tracker.request(
                key,
                priority=settings.device_priority if priority is None else priority,
                session_timeout=settings.session_timeout if session_timeout is None else session_timeout,
                wait=wait,
                user=self.user,
                on_progress=self.on_progress,
                progress_every=1.0 if self.on_progress is not None else None,
            )
        except (NoBoardError, TrackerError) as exc:
            tracker.close()
            failure = "waited %.1f s for a board of key %r: %s" % (time.monotonic() - started, key, exc)
        if failure:
            pytest.fail(failure, pytrace=False)  # outside the except: no chained traceback in the report
        board = tracker.assigned  # where the session is (a TVM session does not say)
        assert board is not None  # request() returned a session
        address = "%s:%d" % (board.host, board.port)
        lease = Lease(key, session, tracker, time.monotonic() - started, time.time(), address, address)
        self.leases.append(lease)
        lease.board_id = _board_name(session) or address
        return session

    def release_all(self) -> None:
        """Close every session (lost ones too), free the boards and record each hold on the test."""
        for lease in self.leases:
            close = getattr(lease.session, "close", None)  # a TVM session has none: it ends when dropped
            try:
                if close is not None:
                    close()
            except (FarmError, OSError):
                pass  # a lost board: the test already failed with what happened
            released = time.time()
            lease.tracker.close()
            interval = getattr(lease.session, "board_interval", None)
            lease.session = None
            held_from, held_until = interval if interval else (lease.acquired, released)
            hold = Hold(lease.key, lease.address, lease.board_id, lease.queue_wait, held_until - held_from,
                        held_from, held_until)  # fmt: skip
            self.item.user_properties.extend(hold.properties())
        self.leases.clear()


def _connect(farm: Farm) -> TrackerClient:
    failure = ""
    try:
        return TrackerClient(*farm.tracker)
    except TrackerError as exc:
        failure = str(exc)
    pytest.fail(failure, pytrace=False)


def _board_name(session: Any) -> str:
    """The board's name as it reports it (this project's boards); "" for others or a board already lost."""
    from farm.client.session import RemoteSession  # loaded by the request already; numpy stays out of the controller

    if not isinstance(session, RemoteSession):
        return ""
    try:
        return str(session.system_info().get("name") or "")
    except FarmError:
        return ""
