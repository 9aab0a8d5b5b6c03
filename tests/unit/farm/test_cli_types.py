"""The numeric option types every daemon shares: what they take, and how they refuse the rest."""

from __future__ import annotations

import argparse

import pytest

from farm.cli_types import count, positive_count, seconds, whole


@pytest.mark.parametrize("text, value", [("0", 0), ("7", 7), ("0012", 12)])
def test_count_takes_digits(text: str, value: int) -> None:
    assert count(text) == value


@pytest.mark.parametrize("text", ["", "-1", "+3", " 3", "1.5", "1e3", "x", "\u00b2", "\u0663"])
def test_count_refuses_anything_but_ascii_digits(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="is not a whole number \\(0 or more\\)"):
        count(text)


def test_a_lower_bound_and_a_name() -> None:
    assert positive_count("1") == 1
    with pytest.raises(argparse.ArgumentTypeError, match="'0' is not a whole number \\(1 or more\\)"):
        positive_count("0")
    megabytes = whole(0, "a number of MB")
    with pytest.raises(argparse.ArgumentTypeError, match="'-5' is not a number of MB \\(0 or more\\)"):
        megabytes("-5")
    assert whole(1024, "a number of bytes")("1024") == 1024


@pytest.mark.parametrize("text, value", [("0", 0.0), ("2.5", 2.5), ("1e3", 1000.0)])
def test_seconds(text: str, value: float) -> None:
    assert seconds()(text) == value


@pytest.mark.parametrize("text", ["-1", "inf", "nan", "-inf", "soon", ""])
def test_seconds_refuses_negative_and_not_finite(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="is not a number of seconds \\(0 or more\\)"):
        seconds()(text)


@pytest.mark.parametrize("text", ["0", "-0.0", "inf", "nan"])
def test_positive_seconds_refuse_zero(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="is not a number of seconds above 0"):
        seconds(positive=True)(text)
    assert seconds(positive=True)("0.01") == 0.01


def test_argparse_reports_the_message() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=positive_count)
    assert parser.parse_args(["--n", "3"]).n == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["--n", "0"])
