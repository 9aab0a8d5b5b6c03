"""The native board's input parsers under clang's libFuzzer (farm/native/fuzz/, docs/native-board.md "Fuzzing").

Each target is built with AddressSanitizer and UBSan and runs for a few seconds from the seeds the project's
encoders make; the committed regression inputs of bugs it found run once each. A machine without clang fails
these tests saying what to install: they never skip (CI installs it, see .ci/run).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import Dict

import pytest

from farm.ops import fuzz
from farm.ops.toolchain import BuildError

#: Seconds each target runs; inputs it must at least have run in them (a target runs ten thousands a second).
SECONDS = 3
MIN_RUNS = 2000


@pytest.fixture(scope="module")
def fuzzers() -> Dict[str, str]:
    try:
        return fuzz.build_fuzzers()
    except BuildError as exc:
        pytest.fail("the fuzz targets cannot be built on this machine: %s" % exc, pytrace=False)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    return fuzz.write_seeds(str(tmp_path_factory.mktemp("seeds")))


@pytest.mark.parametrize("target", fuzz.TARGETS)
def test_target_runs_without_a_finding(
    fuzzers: Dict[str, str], seeds: Dict[str, str], tmp_path: Path, target: str
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    artifacts = tmp_path / "artifacts"
    result = fuzz.run_fuzzer(
        fuzzers[target], target, SECONDS, 10_000_000, [str(corpus), seeds[target]], str(artifacts)
    )
    assert not result.crashed, result.output[-6000:]
    assert result.runs >= MIN_RUNS, result.output[-3000:]
    assert not os.listdir(artifacts), result.output[-3000:]


@pytest.mark.parametrize("target", fuzz.TARGETS)
def test_seeds_are_real_inputs(seeds: Dict[str, str], target: str) -> None:
    assert len(os.listdir(seeds[target])) >= 3


def test_regressions_stay_fixed(fuzzers: Dict[str, str]) -> None:
    found = {target: fuzz.regressions(target) for target in fuzz.TARGETS}
    assert any(found.values()), "no regression inputs under %s" % fuzz.REGRESSION_DIR
    for target, inputs in found.items():
        if inputs:
            result = fuzz.run_regressions(fuzzers[target], target)
            assert not result.crashed, result.output[-6000:]


def test_without_clang_the_message_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FUZZ_CC", raising=False)
    monkeypatch.setattr(fuzz.shutil, "which", lambda name: None)
    with pytest.raises(BuildError, match="apt-get install clang-14 libclang-rt-14-dev"):
        fuzz.fuzz_compiler()


def test_the_proof_seed_passes_the_proof(seeds: Dict[str, str]) -> None:
    """The acceptor-side seed carries the client's proof made with the target's secret and nonce (fuzz.h)."""
    seed = (Path(seeds["proof"]) / "seed-00").read_bytes()
    client_nonce = seed[6:38]  # after the side byte, the magic and the version
    label = b"farm-auth-v1 client" + fuzz.NONCE + client_nonce
    assert seed[38:70] == hmac.new(fuzz.SECRET, label, hashlib.sha256).digest()


def test_the_targets_hold_the_secret_and_nonce_of_the_seeds() -> None:
    header = (Path(fuzz.FUZZ_DIR) / "fuzz.h").read_text()
    assert '#define FUZZ_SECRET "%s"' % fuzz.SECRET.decode() in header
    assert "#define FUZZ_NONCE_BYTE 0x%02X" % fuzz.NONCE[0] in header
    assert fuzz.NONCE == fuzz.NONCE[:1] * 32
