"""The native board's SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104), against Python's hashlib and hmac."""

from __future__ import annotations

import hashlib
import hmac
import random
import subprocess
from pathlib import Path
from typing import List

import pytest

from farm.ops.native import SOURCE_DIR
from farm.ops.toolchain import compile_shared

DRIVER = Path(__file__).with_name("digest.c")
NATIVE = Path(SOURCE_DIR)


@pytest.fixture(scope="module")
def digest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The driver built with the native board's own sources (its SHA-256 and HMAC, and what they use)."""
    out = tmp_path_factory.mktemp("digest") / "digest"
    flags = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", "-I", str(NATIVE)]
    return Path(compile_shared([DRIVER, NATIVE / "sha256.c", NATIVE / "util.c"], out, flags=flags))


def _run(driver: Path, tmp_path: Path, message: bytes, key: bytes) -> List[str]:
    (tmp_path / "message").write_bytes(message)
    (tmp_path / "key").write_bytes(key)
    result = subprocess.run([str(driver), str(tmp_path / "message"), str(tmp_path / "key")], capture_output=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.decode().split()


# Around the 64-byte block and the 55/56 bytes where the length no longer fits the last block; keys shorter than,
# equal to and longer than a block (hashed first).
LENGTHS = [0, 1, 3, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 100_000]
KEY_LENGTHS = [1, 16, 32, 63, 64, 65, 200]


@pytest.mark.parametrize("length", LENGTHS)
def test_sha256_and_hmac_match_hashlib(digest: Path, tmp_path: Path, length: int) -> None:
    rng = random.Random(length)
    message = bytes(rng.getrandbits(8) for _ in range(length))
    for key_length in KEY_LENGTHS:
        key = bytes(rng.getrandbits(8) for _ in range(key_length))
        sha, mac = _run(digest, tmp_path, message, key)
        assert sha == hashlib.sha256(message).hexdigest(), (length, key_length)
        assert mac == hmac.new(key, message, hashlib.sha256).hexdigest(), (length, key_length)


def test_the_standards_own_vectors(digest: Path, tmp_path: Path) -> None:
    """FIPS 180-4's "abc" and RFC 4231's test case 2, as published."""
    sha, _ = _run(digest, tmp_path, b"abc", b"k")
    assert sha == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    _, mac = _run(digest, tmp_path, b"what do ya want for nothing?", b"Jefe")
    assert mac == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
