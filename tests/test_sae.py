import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superalign import sae


def planted(n_inputs, n_atoms, k, n_rows, seed=0):
    """Rows with exactly k active atoms of a unit-norm random dictionary, values U[0.5, 1.5]."""
    keys = jax.random.split(jax.random.key(seed), 3)
    D = jax.random.normal(keys[0], (n_atoms, n_inputs))
    D = D / jnp.linalg.norm(D, axis=1, keepdims=True)
    idx = jax.vmap(lambda kk: jax.random.choice(kk, n_atoms, (k,), replace=False))(
        jax.random.split(keys[1], n_rows)
    )
    vals = jax.random.uniform(keys[2], (n_rows, k), minval=0.5, maxval=1.5)
    Z = jnp.zeros((n_rows, n_atoms)).at[jnp.arange(n_rows)[:, None], idx].set(vals)
    return D, Z @ D


def test_recovers_planted_dictionary_and_stays_k_sparse():
    D, X = planted(32, 64, 4, 100_000)
    cfg = sae.toy_config(32, n_latents=64, k=4, batch_size=256, n_epochs=4, shuffle=True, lr=3e-3)
    params, metrics = jax.jit(sae.make_train(cfg))(jax.random.key(0), X)
    W_dec = params.W_dec / jnp.linalg.norm(params.W_dec, axis=1, keepdims=True)
    best_cos = (D @ W_dec.T).max(axis=1)
    assert float(best_cos.mean()) >= 0.9
    latents, pre = sae.encode(cfg, params, X[:5000])
    assert int((latents != 0).sum(axis=1).max()) <= cfg.k
    assert latents.shape == pre.shape == (5000, 64)
    # Non-zero latents are the ReLU'd top-k pre-activations.
    kth = jnp.sort(pre, axis=1)[:, -cfg.k][:, None]
    np.testing.assert_array_equal(latents, jnp.where((pre >= kth) & (pre > 0), pre, 0.0))
    assert float(metrics.mse[-100:].mean()) < 0.2 * float(metrics.mse[:100].mean())


def test_aux_loss_revives_dead_latents():
    """A learning rate of 1e-2 kills latents; the paper's AuxK weight (0.1) revives most."""
    D, X = planted(16, 32, 3, 50_000, seed=3)
    base = dict(n_latents=32, k=3, batch_size=256, lr=1e-2)
    without = jax.jit(sae.make_train(sae.toy_config(16, aux_weight=0.0, **base)))
    with_aux = jax.jit(sae.make_train(sae.toy_config(16, **base)))  # each compiled once
    for seed in (1, 2):
        dead_without = without(jax.random.key(seed), X)[1].n_dead
        dead_with = with_aux(jax.random.key(seed), X)[1].n_dead
        assert float(dead_without[-20:].mean()) >= 5  # the case does kill latents
        assert float(dead_with[-20:].mean()) < float(dead_without[-20:].mean())


def test_loss_matches_hand_computation():
    """TopK, dead mask, AuxK with k_aux = n_latents and both reductions, against numpy."""
    n, L, k = 5, 12, 3
    X = np.asarray(jax.random.normal(jax.random.key(0), (7, n)), np.float64)
    for reduction in ("mean", "sum_dims"):
        cfg = sae.SAEConfig(n_inputs=n, n_latents=L, k=k, loss_reduction=reduction, dead_steps=2)
        params = sae.init(cfg, jax.random.key(1))
        params = params._replace(b_enc=jnp.linspace(-1, 0.5, L, dtype=jnp.float32))
        counters = jnp.array([0, 1, 5, 0, 1, 2, 0, 0, 9, 1, 0, 3], jnp.int32)
        with jax.default_matmul_precision("highest"):  # not TF32 on GPUs: this checks formulas
            total, (mse, aux, new, n_dead) = sae.loss_fn(
                cfg, params, jnp.asarray(X, jnp.float32), counters
            )
        We, be, Wd, bd = (np.asarray(a, np.float64) for a in params)
        pre = X @ We + be
        lat = np.zeros_like(pre)
        top = np.argsort(-pre, axis=1)[:, :k]
        np.put_along_axis(lat, top, np.maximum(np.take_along_axis(pre, top, 1), 0), 1)
        res = X - (lat @ Wd + bd)
        fired = (lat > 0).any(axis=0)
        exp_new = np.where(fired, 0, np.asarray(counters) + 1)
        dead = exp_new >= 2
        e_hat = np.where(dead, pre, 0) @ Wd + bd
        red = np.mean if reduction == "mean" else (lambda a: np.mean(a.sum(-1)))
        np.testing.assert_array_equal(new, exp_new)
        assert int(n_dead) == dead.sum()
        np.testing.assert_allclose(mse, red(res**2), rtol=1e-5)
        np.testing.assert_allclose(aux, red((e_hat - res) ** 2), rtol=1e-5)
        np.testing.assert_allclose(
            total, red(res**2) + cfg.aux_weight * red((e_hat - res) ** 2), rtol=1e-5
        )


@pytest.mark.parametrize("counters", [[0] * 12, [0, 1, 5, 0, 1, 2, 0, 0, 9, 1, 0, 3]])
def test_loss_and_gradients_equal_the_dense_aux_formula(counters):
    """With no dead latent the AuxK matmuls are skipped; loss and gradients are unchanged.

    Reference: the loss written out with the dense AuxK reconstruction ``where(dead, pre, 0)
    W_dec + b_dec`` every step, differentiated by jax.grad. First without a dead latent (the
    skip), then with dead latents (the matmul).
    """
    n, L, k = 5, 12, 3
    cfg = sae.SAEConfig(n_inputs=n, n_latents=L, k=k, dead_steps=2, aux_weight=0.5)
    params = sae.init(cfg, jax.random.key(1))
    params = params._replace(b_enc=jnp.linspace(-1, 0.5, L, dtype=jnp.float32))
    x = jax.random.normal(jax.random.key(0), (7, n))
    counters = jnp.asarray(counters, jnp.int32)

    def reference(p):
        pre = x @ p.W_enc + p.b_enc
        values, idx = jax.lax.top_k(pre, k)
        lat = jnp.put_along_axis(
            jnp.zeros_like(pre), idx, jax.nn.relu(values), axis=-1, inplace=False
        )
        res = x - (lat @ p.W_dec + p.b_dec)
        fired = (lat > 0).any(0)
        dead = jnp.where(fired, 0, counters + 1) >= cfg.dead_steps
        e_hat = jnp.where(dead, pre, 0.0) @ p.W_dec + p.b_dec
        return jnp.mean(res**2) + cfg.aux_weight * jnp.mean((e_hat - res) ** 2), dead.sum()

    with jax.default_matmul_precision("highest"):
        (want, n_dead), want_g = jax.value_and_grad(reference, has_aux=True)(params)
        (got, aux), got_g = jax.value_and_grad(
            lambda p: sae.loss_fn(cfg, p, x, counters), has_aux=True
        )(params)
    assert int(aux[3]) == int(n_dead) and (int(n_dead) > 0) == (int(counters.max()) > 0)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for a, b in zip(got_g, want_g, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_gather_and_dense_decode_agree():
    X = jax.random.normal(jax.random.key(0), (512, 8))
    kw = dict(n_latents=32, k=3, batch_size=64, aux_weight=0.1, k_aux=10)
    dense = sae.toy_config(8, decode="dense", **kw)
    gather = sae.toy_config(8, decode="gather", **kw)
    p_dense, m_dense = jax.jit(sae.make_train(dense))(jax.random.key(2), X)
    p_gather, m_gather = jax.jit(sae.make_train(gather))(jax.random.key(2), X)
    np.testing.assert_allclose(m_dense.mse, m_gather.mse, rtol=1e-4)
    np.testing.assert_allclose(p_dense.W_dec, p_gather.W_dec, rtol=1e-4, atol=1e-6)


def test_vmapped_seeds_equal_separate_runs():
    X = jax.random.normal(jax.random.key(0), (3, 1024, 8))
    cfg = sae.toy_config(8, n_latents=16, k=2, batch_size=128, n_epochs=2, shuffle=True)
    train = sae.make_train(cfg)
    keys = jax.random.split(jax.random.key(1), 3)
    many = jax.jit(jax.vmap(train))
    params, _ = many(keys, X)
    for i in range(3):
        p_i, _ = jax.jit(train)(keys[i], X[i])
        np.testing.assert_allclose(params.W_enc[i], p_i.W_enc, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(params.W_dec[i], p_i.W_dec, rtol=1e-5, atol=1e-7)


def test_stream_equals_in_memory_training():
    """Chunks of an in-order pass give the same SAE as the in-memory scan, also vmapped."""
    X = jax.random.normal(jax.random.key(0), (2, 2048, 8))
    cfg = sae.toy_config(8, n_latents=16, k=2, batch_size=128, n_epochs=2)
    key = jax.random.key(4)
    k_init, _ = jax.random.split(key)
    chunks = lambda: (X[0, i : i + 512] for i in range(0, 2048, 512))  # noqa: E731
    p_stream, m_stream = sae.train_on_stream(cfg, key, chunks)
    # The in-memory run with the same init key: make_train splits its key the same way.
    state = sae.init_state(cfg, k_init)
    run = jax.jit(sae.make_chunk_run(cfg))
    for _ in range(2):
        state, _ = run(state, X[0], key)
    np.testing.assert_allclose(p_stream.W_dec, state.params.W_dec, rtol=1e-5, atol=1e-7)
    assert m_stream.mse.shape == (32,)
    seeds = lambda: (X[:, i : i + 1024] for i in range(0, 2048, 1024))  # noqa: E731
    p_seeds, m_seeds = sae.train_on_stream(cfg, key, seeds, n_seeds=2)
    assert p_seeds.W_dec.shape == (2, 16, 8) and m_seeds.mse.shape == (2, 32)


def test_dnn_variant_normalises_and_uses_kaiming_init():
    cfg = sae.dnn_config(64, expansion=4, k=8)
    assert (cfg.n_latents, cfg.adam_eps, cfg.dead_steps, cfg.aux_weight) == (
        256,
        6.25e-10,
        32,
        1e-4,
    )
    p = sae.init(cfg, jax.random.key(0))
    bound_enc, bound_dec = np.sqrt(6 / 64), np.sqrt(6 / 256)
    assert (
        float(jnp.abs(p.W_enc).max()) <= bound_enc
        and float(jnp.abs(p.W_enc).max()) > 0.95 * bound_enc
    )
    assert (
        float(jnp.abs(p.W_dec).max()) <= bound_dec
        and float(jnp.abs(p.W_dec).max()) > 0.95 * bound_dec
    )
    x = jax.random.normal(jax.random.key(1), (10, 64)) * 3 + 5
    # Per-sample normalisation: encoding x equals encoding its standardised rows.
    z = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    lat_x, _ = sae.encode(cfg, p, x)
    lat_z, _ = sae.encode(cfg, p, z)
    np.testing.assert_allclose(lat_x, lat_z, rtol=1e-4, atol=1e-5)


def test_random_sae_control_is_the_untrained_init():
    cfg = sae.toy_config(8)
    p = sae.init(cfg, jax.random.key(0))
    lat, _ = sae.encode(cfg, p, jax.random.uniform(jax.random.key(1), (100, 8)))
    assert lat.shape == (100, 64) and int((lat > 0).sum(1).max()) <= 7


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(k=0), "k must be in 1..n_latents"),
        (dict(k=65), "k must be in 1..n_latents"),
        (dict(n_latents=0), "n_latents"),
        (dict(n_inputs=-2), "n_inputs"),
        (dict(lr=0.0), "lr"),
        (dict(batch_size=0), "batch_size"),
        (dict(n_epochs=0), "n_epochs"),
        (dict(k_aux=100), "k_aux"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sae.SAEConfig(**({"n_inputs": 8} | kwargs))


@pytest.mark.parametrize(
    "x, match",
    [
        (np.full((256, 8), np.nan, np.float32), "finite"),
        (np.pad(np.ones((255, 8), np.float32), ((0, 1), (0, 0)), constant_values=np.inf), "finite"),
        (np.ones((256, 8, 1), np.float32), "rank 2"),
        (np.ones((256,), np.float32), "rank 2"),
        (np.ones((256, 9), np.float32), "last dimension 8"),
        (np.ones((100, 8), np.float32), "batch_size"),
    ],
)
def test_train_rejects_bad_activations(x, match):
    train = sae.make_train(sae.toy_config(8, batch_size=128))
    with pytest.raises(ValueError, match=match):
        train(jax.random.key(0), x)
    with pytest.raises(ValueError, match=match):
        sae.train_on_stream(sae.toy_config(8, batch_size=128), jax.random.key(0), lambda: [x])


def test_train_and_encode_accept_lists_and_refuse_complex():
    cfg = sae.toy_config(4, n_latents=8, k=2, batch_size=16)
    x = np.asarray(jax.random.normal(jax.random.key(0), (32, 4)))
    train = sae.make_train(cfg)
    params, metrics = train(jax.random.key(1), x)
    from_list, list_metrics = train(jax.random.key(1), x.tolist())
    for a, b in zip(params, from_list, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(metrics.mse, list_metrics.mse)
    for a, b in zip(sae.encode(cfg, params, x), sae.encode(cfg, params, x.tolist()), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="x must be real, got dtype complex64"):
        train(jax.random.key(1), x.astype(np.complex64))


def test_concrete_non_finite_input_is_refused_and_traced_is_not_checked():
    cfg = sae.toy_config(4, n_latents=8, k=2, batch_size=16)
    x = np.ones((32, 4), np.float32)
    x[5, 2] = np.nan
    train = sae.make_train(cfg)
    keys = jax.random.split(jax.random.key(0), 2)
    with pytest.raises(ValueError, match="x must be finite"):
        train(keys[0], x)
    with pytest.raises(ValueError, match="x must be finite"):  # unmapped under vmap: concrete
        jax.vmap(train, in_axes=(0, None))(keys, jnp.asarray(x))
    params, _ = jax.jit(train)(keys[0], x)  # traced: shape only; NaN goes through
    assert not np.isfinite(np.asarray(params.W_enc)).all()


def test_traced_train_checks_shape():
    train = jax.jit(sae.make_train(sae.toy_config(8, batch_size=128)))
    with pytest.raises(ValueError, match="last dimension 8"):
        train(jax.random.key(0), jnp.ones((256, 9)))


@pytest.mark.parametrize(("shape", "k"), [((3, 50, 64), 7), ((200, 16), 16), ((40, 2048), 32)])
def test_top_k_is_lax_top_k_bitwise(shape, k):
    """The narrow-code top-k (k rounds of max) returns lax.top_k's values, indices (ties to the
    lower index: the data are small integers) and gradient."""
    x = jax.random.randint(jax.random.key(0), shape, -6, 6).astype(jnp.float32)
    ours, ref = sae.top_k(x, k), jax.lax.top_k(x, k)
    np.testing.assert_array_equal(ours[0], ref[0])
    np.testing.assert_array_equal(ours[1], ref[1])
    w = jax.random.normal(jax.random.key(1), (*shape[:-1], k))
    grad = jax.grad(lambda x, f: (f(x, k)[0] * w).sum())
    np.testing.assert_array_equal(grad(x, sae.top_k), grad(x, jax.lax.top_k))
