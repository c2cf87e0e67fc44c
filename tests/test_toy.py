import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_events import compile_events

from superalign import analysis, features, toy


def test_vmapped_seeds_equal_separate_runs_and_do_not_recompile():
    cfg = toy.ToyConfig(n_features=16, n_hidden=4, batch_size=64, n_steps=50)
    train = toy.make_train(cfg)
    keys = jax.random.split(jax.random.key(0), 4)
    many = jax.jit(jax.vmap(train))
    params, metrics = many(keys)
    single = jax.jit(train)
    for i in range(4):
        p_i, m_i = single(keys[i])
        np.testing.assert_allclose(params.W[i], p_i.W, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(params.b[i], p_i.b, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(metrics.loss[i], m_i.loss, rtol=1e-5)
    events = compile_events()
    again, _ = many(jax.random.split(jax.random.key(1), 4))
    jax.block_until_ready(again)
    assert events == [], "a second call with the same shapes recompiled"
    assert not np.allclose(again.W, params.W)


def test_grouped_seeds_equal_vmapped_seeds():
    cfg = toy.ToyConfig(n_features=16, n_hidden=4, batch_size=64, n_steps=30)
    keys = jax.random.split(jax.random.key(1), 8)
    params, metrics = jax.jit(jax.vmap(toy.make_train(cfg)))(keys)
    grouped, grouped_metrics = jax.jit(toy.make_train_seeds(cfg, group_size=4))(keys)
    np.testing.assert_allclose(grouped.W, params.W, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grouped_metrics.loss, metrics.loss, rtol=1e-5)
    with pytest.raises(ValueError, match="multiple of group_size"):
        toy.make_train_seeds(cfg, group_size=3)(keys)


def test_segments_equal_one_run():
    """Checkpoint segments (run in pieces) reproduce the single scan exactly."""
    cfg = toy.ToyConfig(n_features=16, n_hidden=4, batch_size=64, n_steps=40)
    run = jax.jit(toy.make_run(cfg), static_argnums=2)
    key = jax.random.key(5)
    whole, _ = run(toy.init_state(cfg, key), 0, 40)
    part, _ = run(toy.init_state(cfg, key), 0, 25)
    part, _ = run(part, 25, 15)
    np.testing.assert_allclose(part.params.W, whole.params.W, rtol=1e-6, atol=1e-7)


def test_loss_matches_hand_computation():
    cfg = toy.ToyConfig(n_features=8, n_hidden=3)
    params = toy.init(cfg, jax.random.key(0))
    params = params._replace(b=jnp.linspace(-0.2, 0.2, 8, dtype=jnp.float32))
    z = features.sample(jax.random.key(1), 16, 8, 0.3)
    W, b, zn = (np.asarray(a, np.float64) for a in (params.W, params.b, z))
    h = np.maximum(zn @ W, 0)
    out = np.maximum(h @ W.T + b, 0)
    imp = 1 / (1 + 2 * np.arange(8) / 8) ** 2
    expected = np.mean(imp * (zn - out) ** 2)
    with jax.default_matmul_precision("highest"):  # not TF32 on GPUs: this checks formulas
        got = toy.loss(params, z, features.importance(8))
        got_lin = toy.loss(params, z, features.importance(8), output_relu=False)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    out_lin = h @ W.T + b
    np.testing.assert_allclose(got_lin, np.mean(imp * (zn - out_lin) ** 2), rtol=1e-5)


def test_xavier_normal_init_scale():
    cfg = toy.ToyConfig(n_features=256, n_hidden=256)
    W = np.asarray(toy.init(cfg, jax.random.key(0)).W)
    assert abs(W.std() - np.sqrt(2 / 512)) < 0.002
    assert np.abs(W).max() > 3 * np.sqrt(2 / 512)  # a plain, untruncated normal


def test_output_relu_gives_superposition():
    """F = 64, N = 16, 3,000 steps: more than N features with the output ReLU, at most N without."""
    keys = jax.random.split(jax.random.key(0), 2)
    relu = toy.ToyConfig(n_hidden=16, n_steps=3000)
    linear = toy.ToyConfig(n_hidden=16, n_steps=3000, output_relu=False)
    W_relu = jax.jit(jax.vmap(toy.make_train(relu)))(keys)[0].W
    W_lin = jax.jit(jax.vmap(toy.make_train(linear)))(keys)[0].W
    for W in W_relu:
        assert int(analysis.n_represented(W)) > 16
        assert int(analysis.n_directions(W)) > 16
    for W in W_lin:
        # Counted by direction (see analysis.n_directions): a pair of near-equally important
        # features can share one direction at norm 1/sqrt(2) each, which is not superposition.
        assert int(analysis.n_directions(W)) <= 16


@pytest.mark.parametrize(
    "field, value",
    [
        ("n_hidden", 0),
        ("n_features", -1),
        ("n_steps", 0),
        ("batch_size", 0),
        ("lr", 0.0),
        ("lr", -1e-3),
        ("feature_prob", 0.0),
        ("feature_prob", 1.1),
        ("n_hidden", 2.5),
    ],
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        toy.ToyConfig(**{field: value})
