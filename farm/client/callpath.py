"""The compiled call path: a call's whole round trip in C, where the extension was built at install.

``farm.client._callpath`` (``callpath.c``) checks a call's arguments against a plan made here from the
function's signature, writes the CALL frame, sends it and receives the reply without the GIL, and returns the
value of a plain RESULT. It covers the usual call on a plain socket; whatever it does not cover it hands back
untouched (arguments it does not take: :data:`BAIL`, before anything is sent; a reply other than the call's
plain RESULT: :data:`~farm.protocol.calls.NOT_A_RESULT`, with the bytes received), and the session's Python
path, which has every rule, takes over. Without a C compiler at install the extension is absent and every call
takes the Python path. ``REMOTEDEV_COMPILED_CALLS=0`` turns the compiled path off.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Optional, Tuple

from ..protocol.calls import MAX_ARGS, NOT_A_RESULT
from ..signature import Signature

_CallPath: Optional[type]
try:
    from ._callpath import CallPath as _CallPath
except ImportError:  # built without a C compiler or Python's headers: the Python path alone
    _CallPath = None

#: The environment variable that turns the compiled call path off (``0``).
ENV = "REMOTEDEV_COMPILED_CALLS"

#: What a compiled call returns for arguments it leaves to the Python path (nothing was sent).
BAIL = object()

_INT64 = (-(1 << 63), (1 << 63) - 1)


def available() -> bool:
    """Whether calls take the compiled path: the extension is built and not turned off."""
    return _CallPath is not None and os.environ.get(ENV, "1") != "0"


def plan(signature: Optional[Signature]) -> Optional[Tuple[Tuple[str, Optional[str], int, int], ...]]:
    """What each parameter takes on the compiled path: ``(kind, dtype, low, high)``; None without a signature.

    A pointer takes an array of its dtype (any dtype for raw memory) or None; an integer parameter an int in its
    C type's range (a bool's: any int64); a float parameter a float or an int64. Values of 64-bit unsigned
    parameters past int64 are left to the Python path, as are arrays of other dtypes, whose errors it words.
    """
    if signature is None:
        return None
    ranges = {index: (low, high - 1) for index, low, high in signature.int_ranges}
    entries = []
    for index, param in enumerate(signature.params):
        kind = param.type.kind
        if kind == "pointer":
            entries.append(("pointer", param.type.dtype, *_INT64))
        elif kind == "float":
            entries.append(("float", None, *_INT64))
        else:
            low, high = ranges.get(index, _INT64)
            entries.append(("integer", None, max(low, _INT64[0]), min(high, _INT64[1])))
    return tuple(entries)


def compiled_path(sock: Any, function_id: int, session: Any, array_type: type, signature: Optional[Signature],
                  returns_bool: bool) -> Optional[Any]:  # fmt: skip
    """The compiled call of one function of ``session`` on its plain socket ``sock``; None where calls take the
    Python path (no extension, turned off, a TLS or other socket object, more parameters than a call carries)."""
    if not available() or type(sock) is not socket.socket:
        return None
    if signature is not None and len(signature.params) > MAX_ARGS:
        return None
    assert _CallPath is not None
    return _CallPath(sock, function_id, session, array_type, plan(signature), returns_bool, BAIL, NOT_A_RESULT)
