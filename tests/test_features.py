import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superalign import features


def test_importance_closed_form():
    w = np.asarray(features.importance(64))
    x = 1 + 2 * np.arange(64) / 64  # 64 even steps of x in [1, 3 - 2/64]
    np.testing.assert_allclose(w, 1 / x**2, rtol=1e-6)
    assert w[0] == 1.0 and np.isclose(x[-1], 3 - 2 / 64)


def test_sample_statistics():
    z = np.asarray(features.sample(jax.random.key(0), 200_000, 8, 0.1))
    active = z > 0
    # Activation probability and the U[0, 1] law of active values.
    assert abs(active.mean() - 0.1) < 3e-3
    v = z[active]
    assert abs(v.mean() - 0.5) < 5e-3 and abs(v.var() - 1 / 12) < 3e-3
    assert v.min() >= 0 and v.max() <= 1


def test_batches_are_a_pure_function_of_key_and_step():
    spec = features.DataSpec(seed=3, n_features=16, batch_size=32, n_steps=10)
    a = features.batch(spec, 7)
    b = jax.jit(lambda s: features.batch(spec, s))(jnp.int32(7))
    stacked = features.batches(spec, jnp.arange(10))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(stacked[7], a)
    assert not np.array_equal(stacked[6], stacked[7])
    other = features.DataSpec(seed=4, n_features=16, batch_size=32, n_steps=10)
    assert not np.array_equal(features.batch(other, 7), a)


def test_split_is_a_split_of_steps():
    train, held = features.split_steps(features.DataSpec())
    assert (train.start, train.stop, held.start, held.stop) == (0, 8000, 8000, 10000)
    assert len(held) * 1024 == 2_048_000


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prob=0.0), "prob"),
        (dict(prob=1.5), "prob"),
        (dict(n_rows=0), "n_rows"),
        (dict(n_features=-3), "n_features"),
    ],
)
def test_sample_rejects_bad_input(kwargs, match):
    args = dict(n_rows=4, n_features=4, prob=0.1) | kwargs
    with pytest.raises(ValueError, match=match):
        features.sample(jax.random.key(0), **args)
