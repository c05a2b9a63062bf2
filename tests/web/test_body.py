"""Parsing request bodies: the JSON nesting limit, and its cost when nothing is deep."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventmill.web.body import MAX_JSON_DEPTH, json_depth_exceeds, parse_json
from eventmill.web.errors import ApiError
from tests import payloads
from tests.events.strategies import json_values


def _nested(depth: int, leaf: Any = 0) -> Any:
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


@pytest.mark.parametrize("depth", [0, 1, 2, MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH])
def test_nesting_up_to_the_limit_is_parsed(depth: int) -> None:
    value = _nested(depth)
    assert parse_json(orjson.dumps(value)) == value


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 254, 255, 300, 1024, 1025, 100_000])
def test_nesting_over_the_limit_is_422_naming_it(depth: int) -> None:
    body = b"[" * depth + b"]" * depth  # also past orjson's own bound (1,024)
    with pytest.raises(ApiError) as caught:
        parse_json(body)
    assert caught.value.status == 422
    assert caught.value.error == "json_too_deep"
    assert f"{MAX_JSON_DEPTH} levels" in caught.value.message


def test_deep_nesting_inside_a_wide_body_is_found() -> None:
    wide = {"events": [{"a": [1, {"b": 2}]} for _ in range(200)]}
    wide["events"][150]["deep"] = _nested(MAX_JSON_DEPTH - 2)  # 3 + 62 levels in all
    with pytest.raises(ApiError):
        parse_json(orjson.dumps(wide))
    wide["events"][150]["deep"] = _nested(MAX_JSON_DEPTH - 3)
    assert parse_json(orjson.dumps(wide)) == wide


def test_brackets_inside_strings_do_not_count() -> None:
    body = orjson.dumps({"text": "[" * 500 + "{" * 500})
    assert parse_json(body) == {"text": "[" * 500 + "{" * 500}


@given(json_values)
def test_depth_check_agrees_with_the_definition(value: Any) -> None:
    for limit in range(6):
        assert json_depth_exceeds(value, limit) == (_depth(value) > limit)


@given(st.binary(max_size=64))
def test_anything_is_parsed_or_refused_with_a_4xx(body: bytes) -> None:
    status = 200
    try:
        parse_json(body)
    except ApiError as exc:
        status = exc.status
    assert status in (200, 400, 422)


def test_a_webhook_body_is_not_walked() -> None:
    """The walk only runs on bodies with more opening brackets than the limit: a real
    Razorpay body has a handful."""
    body = payloads.dumps(payloads.payment_captured())
    assert body.count(b"[") + body.count(b"{") < MAX_JSON_DEPTH


def test_the_documented_limit_is_the_limit() -> None:
    from eventmill.web.errors import error_responses

    assert f"{MAX_JSON_DEPTH} levels" in error_responses(422)[422]["description"]


@pytest.mark.parametrize(
    "number", ["18446744073709551616", "-9223372036854775809", "1" * 30, "-" + "9" * 40, "1" * 5000]
)
def test_an_integer_beyond_64_bits_is_refused_not_rounded(number: str) -> None:
    """orjson would parse it as an inexact float (and could not write it back): the
    body is refused, naming the problem, instead of stored changed."""
    with pytest.raises(ApiError) as info:
        parse_json(f'{{"order_id": {number}}}'.encode())
    assert (info.value.status, info.value.error) == (422, "number_out_of_range")


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": 18446744073709551615, "b": -9223372036854775808}',  # the range's ends
        b'{"card": "123456789012345678901234567890"}',  # digits in a string
        b'{"x": 1.2345678901234567890123}',  # a float is a float
    ],
)
def test_integers_in_range_and_long_digits_in_strings_parse(body: bytes) -> None:
    assert parse_json(body) == orjson.loads(body)
