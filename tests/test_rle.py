"""RLE codec: known strings, round trips on random masks, and every malformed input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from segfold.data import rle
from segfold.errors import DataError

# A 3x4 mask:          column-major pixel numbers (1-indexed):
#   0 1 0 0              1 4 7 10
#   1 0 0 0              2 5 8 11
#   1 0 0 1              3 6 9 12
MASK = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 1]], dtype=np.uint8)


def test_known_strings_column_major():
    # foreground pixels 2, 3, 4 (one run of 3 from 2) and 12 (one run of 1)
    assert rle.encode(MASK) == "2 3 12 1"
    np.testing.assert_array_equal(rle.decode("2 3 12 1", (3, 4)), MASK)


def test_known_strings_row_major():
    # row-major numbering: row 0 is 1..4, row 1 is 5..8, row 2 is 9..12 -> pixels 2, 5, 9, 12
    assert rle.encode(MASK, order="C") == "2 1 5 1 9 1 12 1"
    np.testing.assert_array_equal(rle.decode("2 1 5 1 9 1 12 1", (3, 4), order="C"), MASK)


def test_known_strings_relative():
    # runs at 0-indexed 1..3 and 11: first gap 1 from pixel 0; the next run starts 11 - 4 = 7 after the end
    assert rle.encode_relative(MASK) == "1 3 7 1"
    np.testing.assert_array_equal(rle.decode_relative("1 3 7 1", (3, 4)), MASK)


def test_empty_masks():
    empty = np.zeros((5, 7), dtype=np.uint8)
    assert rle.encode(empty) == ""
    assert rle.encode_relative(empty) == "-1"
    for text in ("", "   "):
        np.testing.assert_array_equal(rle.decode(text, (5, 7)), empty)
    for text in ("-1", " -1 ", ""):
        np.testing.assert_array_equal(rle.decode_relative(text, (5, 7)), empty)


def test_full_mask_and_runs_touching_the_ends():
    full = np.ones((4, 3), dtype=np.uint8)
    assert rle.encode(full) == "1 12"
    assert rle.encode_relative(full) == "0 12"
    corners = np.zeros((4, 3), dtype=np.uint8)
    corners[0, 0] = corners[3, 2] = 1  # column-major pixels 1 and 12
    assert rle.encode(corners) == "1 1 12 1"
    assert rle.encode_relative(corners) == "0 1 10 1"  # 11 - 1 = 10 pixels skipped


def test_nonbinary_values_count_as_foreground_and_decode_is_contiguous_uint8():
    mask = MASK * 255
    assert rle.encode(mask) == "2 3 12 1"
    assert rle.encode(mask.astype(bool)) == "2 3 12 1"
    out = rle.decode("2 3 12 1", (3, 4))
    assert out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]


def test_dense_masks_use_the_same_numbering():
    # more than 1/8 of the pixels set exercises the dense fill path; every other column is set
    mask = np.zeros((6, 8), dtype=np.uint8)
    mask[:, ::2] = 1
    # columns 0, 2, 4, 6 are column-major pixels 1-6, 13-18, 25-30, 37-42
    assert rle.encode(mask) == "1 6 13 6 25 6 37 6"
    np.testing.assert_array_equal(rle.decode("1 6 13 6 25 6 37 6", (6, 8)), mask)


def test_touching_runs_are_accepted():
    # "1 2 3 2" is the same mask as "1 4": the second run starts right after the first ends
    np.testing.assert_array_equal(rle.decode("1 2 3 2", (2, 3)), rle.decode("1 4", (2, 3)))


def test_format_numbers_matches_str():
    values = np.array([0, 7, 10, 99, 100, 999, 1000, 123456, 999999, 1000000, 1048576, 98765432109])
    assert rle.format_numbers(values) == " ".join(str(v) for v in values.tolist())


masks = st.tuples(st.integers(1, 12), st.integers(1, 12)).flatmap(
    lambda shape: arrays(np.uint8, shape, elements=st.integers(0, 1))
)


@settings(max_examples=150, deadline=None)
@given(mask=masks, order=st.sampled_from(["F", "C"]))
def test_round_trip_random(mask, order):
    assert np.array_equal(rle.decode(rle.encode(mask, order), mask.shape, order), mask)
    assert np.array_equal(rle.decode_relative(rle.encode_relative(mask, order), mask.shape, order), mask)


@settings(max_examples=150, deadline=None)
@given(mask=masks)
def test_encode_matches_a_pixel_walk(mask):
    # independent route: walk the pixels in column-major order and write runs by hand
    flat = [int(v) for v in mask.T.ravel()]
    pairs, i = [], 0
    while i < len(flat):
        if flat[i]:
            j = i
            while j < len(flat) and flat[j]:
                j += 1
            pairs += [i + 1, j - i]
            i = j
        else:
            i += 1
    assert rle.encode(mask) == " ".join(map(str, pairs))
    assert rle.validate(rle.encode(mask), mask.shape) == sum(flat)


def test_large_random_round_trip():
    rng = np.random.default_rng(0)
    mask = (rng.random((256, 1600)) < 0.5).astype(np.uint8)
    for order in ("F", "C"):
        assert np.array_equal(rle.decode(rle.encode(mask, order), mask.shape, order), mask)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 2 3", "odd number of values"),
        ("1 two", "non-numeric token 'two'"),
        ("1.5 2", "non-numeric token '1.5'"),
        ("1 -2", "non-numeric token '-2'"),
        ("1 0", "length 0"),
        ("0 2", "starts at 0"),
        ("5 1 1 1", "unsorted"),
        ("1 3 2 1", "overlap"),
        ("10 4", "past the end"),  # pixels 10..13 of 12
        ("12 1 13 1", "past the end"),
    ],
)
def test_malformed_absolute(text, message):
    with pytest.raises(DataError, match=message):
        rle.decode(text, (3, 4))
    with pytest.raises(ValueError, match=message):  # DataError is a ValueError
        rle.validate(text, (3, 4))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0 2 1", "odd number of values"),
        ("0 x", "non-numeric token 'x'"),
        ("-3 2", "negative value -3"),
        ("0 0", "length 0"),
        ("5 4 0 4", "past the end"),  # 0-indexed pixels 5..8, then 9..12: ends at 13 > 12 pixels
    ],
)
def test_malformed_relative(text, message):
    with pytest.raises(DataError, match=message):
        rle.decode_relative(text, (3, 4))


def test_bad_arguments():
    with pytest.raises(ValueError, match="order"):
        rle.encode(MASK, order="K")
    with pytest.raises(ValueError, match="2-D"):
        rle.encode(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="shape"):
        rle.decode("1 1", (0, 4))
    with pytest.raises(DataError, match="string"):
        rle.decode(float("nan"), (3, 4))


def test_validate_refuses_a_non_string_in_both_forms():
    # pandas gives NaN for an empty cell unless read as text; both forms must say so, not raise AttributeError
    for relative in (False, True):
        with pytest.raises(DataError, match="RLE must be a string, got float"):
            rle.validate(float("nan"), (3, 4), relative=relative)
