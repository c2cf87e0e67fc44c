"""What every alignment metric accepts and refuses: lists and tuples, dtypes, constant units.

Tiny arrays (60 stimuli, a few units) keep these checks fast; the numerics of each metric are
tested against references in its own test file.
"""

import numpy as np
import pytest

import superalign
from superalign import folds as F

METRICS = {
    "soft": superalign.soft_matching,
    "semi": superalign.semi_matching,
    "perm": superalign.permutation_score,
    "ridge": superalign.ridge_regression,
}
M = 60


@pytest.fixture(scope="module")
def pair():
    """A correlated pair: Y's units are noisy copies of shuffled X units."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((M, 4)).astype(np.float32)
    Y = (X[:, [2, 0, 3]] + 0.8 * rng.standard_normal((M, 3))).astype(np.float32)
    return X, Y


@pytest.fixture(scope="module")
def reference(pair):
    """Every metric's result on the plain float32 arrays."""
    return {name: fn(*pair) for name, fn in METRICS.items()}


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("container", [list, tuple])
def test_lists_and_tuples_score_as_arrays(pair, reference, metric, container):
    X, Y = pair

    def nested(a):
        return container(container(row) for row in a.tolist())

    result = METRICS[metric](nested(X), nested(Y))
    np.testing.assert_array_equal(result.folds, reference[metric].folds)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("side", ["X", "Y"])
@pytest.mark.parametrize(
    ("convert", "message"),
    [
        (lambda a: a.astype(np.complex64), "must be real, got dtype complex64"),
        (lambda a: a.astype(np.complex128), "must be real, got dtype complex128"),
        (lambda a: a.astype(object), "must be a real numeric array, got dtype object"),
        (lambda a: a.astype(str), "must be a real numeric array, got dtype <U"),
        (lambda a: a.tolist()[:-1] + [a.tolist()[-1][:-1]], "must be a rectangular array"),
    ],
    ids=["complex64", "complex128", "object", "str", "ragged"],
)
def test_complex_and_non_numeric_input_is_refused(pair, metric, side, convert, message):
    X, Y = pair
    args = (convert(X), Y) if side == "X" else (X, convert(Y))
    with pytest.raises(ValueError, match=f"^{side} {message}"):
        METRICS[metric](*args)


@pytest.mark.parametrize("metric", METRICS)
def test_bool_and_integer_input_are_cast_to_float(pair, metric):
    X, Y = pair
    binary = X > 0  # binary responses: 0 / 1
    counts = np.round(3 * Y).astype(np.int32)
    fn = METRICS[metric]
    np.testing.assert_array_equal(
        fn(binary, counts).folds, fn(binary.astype(np.float32), counts.astype(np.float32)).folds
    )


def _with_unit(a, at, column):
    return np.insert(a, at, column, axis=1)


def _constant_columns():
    """Constant columns, everywhere or on the rows of one fold part only."""
    part = F.kfold_test_indices(M, 5, 0)[2]
    on_part = np.random.default_rng(1).standard_normal(M).astype(np.float32)
    on_part[part] = 4.0
    return {
        "ones": np.ones(M, np.float32),
        "negative": np.full(M, -2.5, np.float32),
        "zero": np.zeros(M, np.float32),
        "one test part": on_part,
    }


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("side", ["X", "Y"])
@pytest.mark.parametrize("column", list(_constant_columns()))
def test_constant_unit_is_dead_and_changes_nothing(pair, reference, metric, side, column):
    X, Y = pair
    at = 1
    unit = _constant_columns()[column]
    if side == "X":
        result = METRICS[metric](_with_unit(X, at, unit), Y)
    else:
        result = METRICS[metric](X, _with_unit(Y, at, unit))
    np.testing.assert_array_equal(result.dead_x, [at] if side == "X" else [])
    np.testing.assert_array_equal(result.dead_y, [at] if side == "Y" else [])
    # Only the compiled widths differ (one column of zero-weight padding): float32 round-off.
    np.testing.assert_allclose(result.folds, reference[metric].folds, rtol=0, atol=1e-6)


def test_constant_units_are_reported_by_live_units():
    X = np.random.default_rng(2).standard_normal((M, 5)).astype(np.float32)
    X[:, 1] = 7.0
    X[F.kfold_test_indices(M, 5, 0)[4], 3] = -1.0
    units = F.live_units("X", X, F.make_folds(M, 5, 0))
    np.testing.assert_array_equal(units.dead, [1, 3])
    np.testing.assert_array_equal(units.live, [0, 2, 4])


@pytest.mark.parametrize("metric", METRICS)
def test_all_units_constant_is_refused(pair, metric):
    X, Y = pair
    with pytest.raises(ValueError, match="Y has no live unit: all 3 columns are constant"):
        METRICS[metric](X, np.full_like(Y, 0.5))
