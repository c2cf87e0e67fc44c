"""Sharded training on 4 simulated CPU devices equals unsharded training; mesh helpers."""

import dataclasses
import json
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from experiment_checks import devices_env

from superalign import sae, sharding, toy

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter: the device count is fixed when jax starts.
FOUR_DEVICES = textwrap.dedent(
    """
    import dataclasses, json
    import jax, numpy as np
    from superalign import sae, sharding, toy

    out = {"devices": len(jax.devices())}
    mesh = sharding.default_mesh()
    keys = jax.random.split(jax.random.key(1), 8)

    cfg = toy.ToyConfig(n_features=16, n_hidden=4, batch_size=64, n_steps=30)
    ref, ref_m = jax.jit(jax.vmap(toy.make_train(cfg)))(keys)
    got, got_m = toy.make_sharded_train(cfg, mesh, group_size=2)(keys)
    # np.allclose semantics: |got - ref| <= atol + rtol |ref|, rtol 1e-5 (atol 1e-7 for zeros).
    close = lambda a, b: bool(np.allclose(a, b, rtol=1e-5, atol=1e-7))
    out["toy"] = [close(got.W, ref.W), close(got.b, ref.b), close(got_m.loss, ref_m.loss)]
    out["toy_devices"] = [sharding.n_devices_used(got.W), sharding.n_devices_used(got_m.loss)]
    out["toy_shard_shape"] = list(got.W.addressable_shards[0].data.shape)
    rows, (W, loss) = sharding.addressable_rows((got.W, got_m.loss))
    out["rows"] = rows.tolist()
    out["rows_equal"] = bool(np.array_equal(W, got.W)) and bool(np.array_equal(loss, got_m.loss))

    z = jax.random.uniform(jax.random.key(0), (640, 16)) * (
        jax.random.uniform(jax.random.key(2), (640, 16)) < 0.3)
    x = np.asarray(jax.vmap(toy.hidden, in_axes=(0, None))(ref, z))  # [8, 640, 4]
    scfg = sae.toy_config(4, n_latents=16, k=3, batch_size=64)
    ref_s, _ = jax.jit(jax.vmap(sae.make_train(scfg)))(keys, x)
    got_s, _ = sae.make_sharded_train(scfg, mesh)(keys, x)
    out["sae"] = [close(a, b) for a, b in zip(got_s, ref_s)]
    out["sae_devices"] = sharding.n_devices_used(got_s.W_enc)
    shared, _ = sae.make_sharded_train(scfg, mesh, shared_x=True)(keys, x[0])
    ref_shared, _ = jax.jit(jax.vmap(sae.make_train(scfg), in_axes=(0, None)))(keys, x[0])
    out["sae_shared"] = [close(a, b) for a, b in zip(shared, ref_shared)]

    one, one_m = jax.jit(sae.make_train(scfg))(keys[0], x[0])
    xb = sae.put_data_parallel(scfg, x[0], mesh)
    dp, dp_m = sae.make_data_parallel_train(scfg, mesh)(keys[0], xb)
    out["dp"] = [close(a, b) for a, b in zip(dp, one)] + [close(dp_m.mse, one_m.mse)]
    out["dp_data_devices"] = sharding.n_devices_used(xb)
    out["dp_shard_shape"] = list(xb.addressable_shards[0].data.shape)
    shuffled = dataclasses.replace(scfg, shuffle=True, n_epochs=2)
    sp, sm = sae.make_data_parallel_train(shuffled, mesh)(keys[0], xb)
    out["dp_shuffled_finite"] = bool(np.isfinite(sp.W_enc).all()) and len(sm.mse) == 20
    print(json.dumps(out))
    """
)


def _four_devices_job(factory):
    job = dict(args=[sys.executable, "-c", FOUR_DEVICES], cwd=ROOT, timeout=300)
    return None, dict(job, env=devices_env(4))


# The interpreter runs in the background from the start of the session; the tests that use it
# run once it is done (see conftest.py).
BACKGROUND = {"four_devices": _four_devices_job}


@pytest.fixture(scope="module")
def four_devices(background, tmp_path_factory):
    _, proc = background.completed(__name__, "four_devices", _four_devices_job, tmp_path_factory)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sharded_toy_training_equals_unsharded_and_is_spread(four_devices):
    r = four_devices
    assert r["devices"] == 4
    assert r["toy"] == [True, True, True]
    assert r["toy_devices"] == [4, 4]
    assert r["toy_shard_shape"] == [2, 16, 4]  # 8 seeds over 4 devices
    assert r["rows"] == list(range(8)) and r["rows_equal"]  # one process holds every seed


def test_sharded_sae_training_equals_unsharded_and_is_spread(four_devices):
    r = four_devices
    assert r["sae"] == [True] * 4 and r["sae_shared"] == [True] * 4
    assert r["sae_devices"] == 4


def test_data_parallel_sae_equals_one_device(four_devices):
    r = four_devices
    assert r["dp"] == [True] * 5
    assert r["dp_data_devices"] == 4
    assert r["dp_shard_shape"] == [10, 16, 4]  # every batch's 64 rows split 4 ways
    assert r["dp_shuffled_finite"]


def test_traced_k_equals_static_k():
    """A sweep over k compiles once at max k and gives exactly the TopK-k SAE."""
    x = jax.random.uniform(jax.random.key(0), (512, 6))
    big = sae.toy_config(6, n_latents=16, k=7, batch_size=64)
    ks = np.array([2, 5, 7])
    swept, swept_m = jax.jit(jax.vmap(sae.make_train(big), in_axes=(None, None, 0)))(
        jax.random.key(3), x, ks
    )
    for i, k in enumerate(ks):
        cfg = dataclasses.replace(big, k=int(k))
        ref, ref_m = jax.jit(sae.make_train(cfg))(jax.random.key(3), x)
        np.testing.assert_allclose(swept.W_enc[i], ref.W_enc, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(swept_m.mse[i], ref_m.mse, rtol=1e-5)
        lat, _ = sae.encode(big, ref, x[:50], k)
        np.testing.assert_array_equal(lat, sae.encode(cfg, ref, x[:50])[0])
        assert int((lat != 0).sum(1).max()) <= k


def test_single_process_gather_broadcast_and_rows_are_identities():
    tree = {"a": np.arange(6.0).reshape(3, 2), "b": np.array([True, False, True])}
    gathered = sharding.gather(tree)
    assert all(np.array_equal(gathered[k], tree[k]) for k in tree)
    assert sharding.broadcast(tree) is tree
    sharding.barrier("nothing to wait for")
    rows, local = sharding.addressable_rows(tree)
    assert rows.tolist() == [0, 1, 2] and np.array_equal(local["a"], tree["a"])
    with pytest.raises(ValueError, match="same leading axis"):
        sharding.addressable_rows({"a": np.zeros((3, 2)), "b": np.zeros(2)})


def test_mesh_helpers_validate():
    mesh = sharding.default_mesh()
    assert mesh.axis_names == (sharding.SEEDS,) and mesh.devices.size == len(jax.devices())
    with pytest.raises(ValueError, match="devices"):
        sharding.default_mesh(devices=[])
    with pytest.raises(ValueError, match="1-D"):
        sharding.leading("not a mesh")
    placed = sharding.put_leading({"a": np.zeros((4, 2)), "b": np.ones(4)}, mesh)
    assert placed["a"].shape == (4, 2)
    with pytest.raises(ValueError, match="same leading axis"):
        sharding.put_leading({"a": np.zeros((4, 2)), "b": np.ones(3)}, mesh)
    two = jax.make_mesh((1,), ("seeds",))
    cfg = toy.ToyConfig(n_features=8, n_hidden=2, batch_size=16, n_steps=5)
    with pytest.raises(ValueError, match="group_size"):
        toy.make_sharded_train(cfg, two, group_size=4)(jax.random.split(jax.random.key(0), 6))
    with pytest.raises(ValueError, match="x must be"):
        scfg = sae.toy_config(2, n_latents=4, k=2, batch_size=16)
        sae.make_sharded_train(scfg, two)(
            jax.random.split(jax.random.key(0), 2), np.ones((3, 32, 2))
        )
