"""Surgery shared by the fuzz tests: byte streams cut into pieces and mutated, decoded messages edited."""

from __future__ import annotations

import random
from typing import Any, List, Sequence, Tuple

from farm.protocol.handshake import MAX_KEY_LENGTH
from farm.protocol.tracker import MAX_MESSAGE

#: Values that make a length field absurd: negative as int32, past every limit, 2 GiB, 2**64 - 1.
HUGE_LENGTHS = [2**31 - 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1, MAX_KEY_LENGTH + 1, MAX_MESSAGE + 1, 1 << 30]
#: The kinds of :func:`mutate`: ``(kind, position, argument)``.
KINDS = ("flip", "truncate", "insert", "delete", "length")

Mutation = Tuple[str, int, Any]
#: Where a stream's length fields are: (offset, width in bytes), little-endian.
Fields = Sequence[Tuple[int, int]]


def cut(data: bytes, points: Sequence[int]) -> List[bytes]:
    """``data`` split at ``points`` (each taken modulo ``len(data) + 1``), in order, without empty pieces."""
    bounds = sorted({point % (len(data) + 1) for point in points} | {0, len(data)})
    return [data[start:end] for start, end in zip(bounds, bounds[1:])]


def mutate(data: bytes, fields: Fields, mutations: Sequence[Mutation]) -> bytes:
    """``data`` after ``mutations``; positions are taken modulo the length; ``length`` overwrites one of ``fields``.

    ``flip`` a bit (argument 0-7), ``truncate`` there, ``insert`` the argument's bytes, ``delete`` the argument's
    count of bytes, or write the argument into a length field (modulo its width).
    """
    out = bytearray(data)
    for kind, position, argument in mutations:
        at = position % (len(out) + 1)
        if kind == "flip" and at < len(out):
            out[at] ^= 1 << argument
        elif kind == "truncate":
            del out[at:]
        elif kind == "insert":
            out[at:at] = argument
        elif kind == "delete":
            del out[at : at + argument]
        elif kind == "length" and fields:
            offset, width = fields[position % len(fields)]
            packed = (argument % (1 << 8 * width)).to_bytes(width, "little")
            out[offset : offset + width] = packed[: max(0, len(out) - offset)]
    return bytes(out)


def random_bytes(rng: random.Random, count: int) -> bytes:
    """``count`` bytes drawn with ``rng``."""
    return rng.getrandbits(8 * count).to_bytes(count, "little") if count else b""


def random_mutations(rng: random.Random, count: int) -> List[Mutation]:
    """``count`` mutations drawn with ``rng``, the huge lengths among them."""
    arguments = {
        "flip": lambda: rng.randrange(8),
        "truncate": lambda: None,
        "insert": lambda: random_bytes(rng, rng.randint(1, 24)),
        "delete": lambda: rng.randint(1, 24),
        "length": lambda: rng.choice(HUGE_LENGTHS) if rng.random() < 0.7 else rng.randrange(2**32),
    }
    return [(kind, rng.randrange(1 << 30), arguments[kind]()) for kind in rng.choices(KINDS, k=count)]


#: Marks a structural edit that removes the value it points at.
REMOVE = object()


def places(value: Any, path: Tuple[Any, ...] = ()) -> List[Tuple[Any, ...]]:
    """The paths (list indexes, dict keys) to every value nested in ``value``, below the top."""
    items = enumerate(value) if isinstance(value, list) else value.items() if isinstance(value, dict) else []
    found = []
    for name, item in items:
        found += [(*path, name), *places(item, (*path, name))]
    return found


def edited(value: Any, path: Tuple[Any, ...], new: Any) -> Any:
    """A copy of ``value`` with the value at ``path`` replaced by ``new``, or removed when ``new`` is REMOVE."""
    copy = list(value) if isinstance(value, list) else dict(value)
    if len(path) > 1:
        copy[path[0]] = edited(value[path[0]], path[1:], new)
    elif new is REMOVE:
        del copy[path[0]]
    else:
        copy[path[0]] = new
    return copy


def edit(message: Any, edits: Sequence[Tuple[int, Any]]) -> Any:
    """``message`` after each ``(place number, new value)`` edit (numbers taken modulo the places there are)."""
    for number, new in edits:
        found = places(message)
        if found:
            message = edited(message, found[number % len(found)], new)
    return message


def random_json(rng: random.Random, depth: int = 2) -> Any:
    """A JSON value drawn with ``rng``: scalars of every type, and lists and objects ``depth`` deep at most."""
    kind = rng.randrange(8 if depth else 6)
    scalars = [None, rng.random() < 0.5, rng.randint(-(2**40), 2**40), rng.uniform(-1e9, 1e9), "", "fz\u00e9\u2603"]
    if kind < len(scalars):
        return scalars[kind]
    if kind == 6:
        return [random_json(rng, depth - 1) for _ in range(rng.randrange(4))]
    return {"k%d" % rng.randrange(9): random_json(rng, depth - 1) for _ in range(rng.randrange(4))}
