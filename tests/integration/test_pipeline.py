"""Pipelined calls on a real board: futures in order, a failure stops the calls after it (they are not run), the
session goes on, and a session lost mid-pipeline fails every call still in flight."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np
import pytest

import farm
from conftest import every_board_server
from farm.client.pipeline import MAX_IN_FLIGHT

pytestmark = every_board_server

ADD = "int add_ints(int a, int b)"
AXPY = "void axpy(double alpha, const double *x, double *y, int64_t n)"


@pytest.fixture
def linalg(remote: farm.RemoteSession, kernels: Dict[str, Path]) -> farm.RemoteModule:
    remote.upload(kernels["liblinalg.so"])
    return remote.load_module("liblinalg.so")


def test_submitted_calls_answer_in_order_past_the_window(linalg: farm.RemoteModule) -> None:
    add = linalg.get_function("add_ints", ADD)
    futures = [add.submit(index, 1) for index in range(3 * MAX_IN_FLIGHT)]  # more than may be in flight at once
    assert [future.result() for future in futures] == [index + 1 for index in range(3 * MAX_IN_FLIGHT)]
    assert all(isinstance(future, farm.CallFuture) and future.done() for future in futures)
    assert add(2, 3) == 5  # a plain call after them


def test_a_plain_request_reads_the_replies_in_flight_first(
    remote: farm.RemoteSession, linalg: farm.RemoteModule
) -> None:
    add = linalg.get_function("add_ints", ADD)
    futures = [add.submit(index, index) for index in range(10)]
    assert not any(future.done() for future in futures)  # nothing read yet
    remote.ping()
    assert all(future.done() for future in futures) and futures[9].result() == 18


def test_calls_in_a_pipeline_block_return_futures(remote: farm.RemoteSession, linalg: farm.RemoteModule) -> None:
    add = linalg.get_function("add_ints", ADD)
    with remote.pipeline():
        futures = [add(index, 2) for index in range(20)]
        assert all(isinstance(future, farm.CallFuture) for future in futures)
    assert all(future.done() for future in futures)  # every reply is in on leaving the block
    assert [future.result() for future in futures] == [index + 2 for index in range(20)]
    assert add(1, 1) == 2  # plain again


def test_a_failure_stops_the_calls_after_it_which_are_not_run(
    remote: farm.RemoteSession, linalg: farm.RemoteModule
) -> None:
    add, unchecked_add = linalg.get_function("add_ints", ADD), linalg["add_ints"]
    axpy = linalg.get_function("axpy", AXPY)
    y = remote.array(np.zeros(4))
    x = remote.array(np.ones(4))
    with pytest.raises(farm.ArgumentError, match=r"argument 1 is 1099511627776, which does not fit a C int"):
        with remote.pipeline():
            before = axpy(1.0, x, y, 4)
            failed = unchecked_add(1 << 40, 1)  # the board refuses it: no signature, beyond a C int
            after = [axpy(1.0, x, y, 4) for _ in range(3)]
    assert before.result() is None
    assert isinstance(failed.exception(), farm.ArgumentError)
    for future in after:
        with pytest.raises(farm.SkippedCallError, match=r"not run: add_ints\(\) from liblinalg.so .* failed"):
            future.result()
    np.testing.assert_array_equal(y.numpy(), np.ones(4))  # only the call before the failure ran
    with remote.pipeline():  # the session goes on, and a new pipeline runs
        again = add(2, 2)
    assert again.result() == 4


def test_submit_after_a_failure_starts_a_new_pipeline(linalg: farm.RemoteModule) -> None:
    add, unchecked_add = linalg.get_function("add_ints", ADD), linalg["add_ints"]
    failed, skipped = unchecked_add.submit(1 << 40, 1), add.submit(1, 1)
    assert isinstance(skipped.exception(), farm.SkippedCallError) and failed.exception() is not None
    assert add.submit(3, 4).result() == 7


def test_a_session_lost_mid_pipeline_fails_every_call_in_flight(
    remote: farm.RemoteSession, linalg: farm.RemoteModule
) -> None:
    add = linalg.get_function("add_ints", ADD)
    crash = linalg.get_function("reverse_bytes", "void reverse_bytes(void *data, int64_t nbytes)")
    futures = [add.submit(1, 1), crash.submit(None, 16), add.submit(2, 2)]
    assert futures[0].result() == 2
    for future in futures[1:]:
        with pytest.raises(farm.SessionLostError, match=r"signal 11 \(SIGSEGV\) while running reverse_bytes"):
            future.result()
    with pytest.raises(farm.SessionLostError):
        remote.ping()


def test_pipelines_do_not_nest(remote: farm.RemoteSession) -> None:
    with remote.pipeline():
        with pytest.raises(farm.RemoteError, match="pipelines do not nest"):
            with remote.pipeline():
                pass
    remote.ping()
