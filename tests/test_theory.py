"""Paper section 3: the constructions, their closed forms, the measured scores, the recovery sweep
and the experiment's guards (test_notebooks runs the notebook: the tiny preset end to end)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import superalign
from experiments import launch, run_files
from experiments import theory as experiment
from experiments.configs import theory as configs
from superalign import theory


def test_sparse_latents_are_k_sparse_whitened_and_nested():
    key = jax.random.key(0)
    Z = np.asarray(theory.sparse_latents(key, 40_000, 8, 2))
    assert ((Z != 0).sum(1) == 2).all()
    cov = Z.T @ Z / len(Z)  # population mean 0: second moments are the covariance
    np.testing.assert_allclose(cov, np.eye(8), atol=0.06)
    np.testing.assert_allclose(Z.mean(0), 0, atol=0.03)
    # A vmap over k with a static max_k: nested supports, each row exactly k non-zeros.
    many = jax.vmap(lambda k: theory.sparse_latents(key, 500, 8, k, max_k=4))(jnp.arange(1, 5))
    nz = np.asarray(many) != 0
    for i in range(4):
        assert (nz[i].sum(1) == i + 1).all()
        if i:
            assert (nz[i - 1] <= nz[i]).all()


def test_equal_and_grouped_mixing_are_the_papers_constructions():
    f = 12
    for n in range(1, 5):
        A = np.asarray(theory.equal_mixing(f, n))
        np.testing.assert_allclose(np.linalg.norm(A, axis=0), 1, rtol=1e-6)
        for j in range(f):
            np.testing.assert_array_equal(np.flatnonzero(A[:, j]), np.sort((j + np.arange(n)) % f))
    vm = jax.vmap(lambda n: theory.equal_mixing(f, n))(jnp.arange(1, 5))
    np.testing.assert_array_equal(vm[2], theory.equal_mixing(f, 3))
    # Pairs {(1,2),(3,4),...} and shifted pairs {(2,3),(4,5),...,(12,1)} (1-based in the paper).
    a = np.asarray(theory.grouped_mixing(f, 2, 0))
    b = np.asarray(theory.grouped_mixing(f, 2, 1))
    assert a.shape == b.shape == (f, 6)
    assert [list(np.flatnonzero(a[:, k])) for k in range(3)] == [[0, 1], [2, 3], [4, 5]]
    assert [list(np.flatnonzero(b[:, k])) for k in (0, 1, 5)] == [[1, 2], [3, 4], [0, 11]]
    np.testing.assert_allclose(a[a != 0], 1 / np.sqrt(2))


@pytest.mark.parametrize("n", range(1, 9))
def test_level_closed_forms_equal_population_scores(n):
    f = 24
    pop = theory.population_scores(np.eye(f), theory.equal_mixing(f, n))
    for value in (pop.permutation, pop.soft, pop.semi):
        assert value == pytest.approx(1 / np.sqrt(n), abs=1e-6)
        assert value == pytest.approx(theory.level_score(n), abs=1e-6)
    assert pop.ridge == pytest.approx(1.0, abs=1e-5)
    assert pop.ridge_reverse == pytest.approx(theory.level_ridge_reverse(f, n), abs=1e-5)


@pytest.mark.parametrize("group", [2, 4, 8])
def test_shift_closed_forms_equal_population_scores(group):
    f = 48
    for shift in range(group + 1):
        pop = theory.population_scores(
            theory.grouped_mixing(f, group, 0), theory.grouped_mixing(f, group, shift)
        )
        closed = theory.shift_score(group, shift)
        assert closed == max(shift % group, group - shift % group) / group
        for value in (pop.permutation, pop.soft, pop.semi):
            assert value == pytest.approx(closed, abs=1e-6)
        assert pop.ridge == pytest.approx(theory.shift_ridge(group, shift), abs=1e-5)
        assert pop.ridge_reverse == pytest.approx(theory.shift_ridge(group, shift), abs=1e-5)
    assert theory.shift_score(2, 1) == 0.5  # the paper's pairs vs shifted pairs


def test_population_scores_against_an_independent_sample_reference():
    # Population correlations of random mixings equal the sample correlations of Z A on a huge
    # Gaussian Z (whitened), computed with numpy alone.
    rng = np.random.default_rng(0)
    A_a, A_b = rng.standard_normal((10, 6)), rng.standard_normal((10, 5))
    Z = rng.standard_normal((400_000, 10))
    sample = np.corrcoef((Z @ A_a).T, (Z @ A_b).T)[:6, 6:]
    np.testing.assert_allclose(theory.population_correlations(A_a, A_b), sample, atol=0.01)
    # Ridge: least squares of Z A_b on Z A_a, then the correlation per target.
    Ya, Yb = Z @ A_a, Z @ A_b
    pred = Ya @ np.linalg.lstsq(Ya, Yb, rcond=None)[0]
    r = [np.corrcoef(pred[:, j], Yb[:, j])[0, 1] for j in range(5)]
    np.testing.assert_allclose(theory.population_ridge(A_a, A_b), r, atol=0.01)


def _latents(m, f, seed):
    # Any whitened Z gives the closed forms; K = F/2 keeps the heavy tails (E z^4 = 3F/K) mild.
    return theory.sparse_latents(jax.random.key(seed), m, f, f // 2)


def test_measured_permutation_scores_meet_the_closed_forms():
    # The library's cross-validated metric on samples, n = 1..8: within 0.01 of 1/sqrt(n).
    f = 32
    Z = _latents(20_000, f, 0)
    for n in range(1, 9):
        score = superalign.permutation_score(Z, Z @ theory.equal_mixing(f, n)).mean
        assert score == pytest.approx(1 / np.sqrt(n), abs=0.01), n
    # Pairs against shifted pairs: 1/2; groups of 4 shifted by 1: 3/4.
    for group, shift in ((2, 1), (4, 1), (4, 2)):
        Ya = Z @ theory.grouped_mixing(f, group, 0)
        Yb = Z @ theory.grouped_mixing(f, group, shift)
        score = superalign.permutation_score(Ya, Yb).mean
        assert score == pytest.approx(theory.shift_score(group, shift), abs=0.01), (group, shift)


def test_recovered_latents_align_where_units_do_not():
    # Well inside the recovery regime: F = 64, N = 32 >= 2 K ln F = 25 for K = 3.
    problem = theory.recovery_problem(jax.random.key(1), 4_000, 64, 3, 32)
    rec = theory.recover(problem, 3)
    assert float(rec.exact_a) > 0.99 and float(rec.exact_b) > 0.99
    recovered = superalign.permutation_score(rec.Z_hat_a, rec.Z_hat_b).mean
    units = superalign.permutation_score(problem.Y_a, problem.Y_b).mean
    population = theory.population_scores(problem.A_a, problem.A_b).permutation
    assert recovered >= 0.99
    assert units == pytest.approx(population, abs=0.03)
    assert units < 0.6


def test_sweep_is_one_vmapped_call_equal_to_separate_points():
    sweep = theory.make_recovery_sweep(400, 16, max_k=4, max_units=12)
    key = jax.random.key(2)
    ks, ns = np.array([1, 2, 4]), np.array([4, 8, 12])
    out = sweep(key, ks, ns)
    assert out.recovered.Z_hat_a.shape == (3, 3, 400, 16)
    for i, j in ((1, 2), (2, 0)):
        p = theory.recovery_problem(key, 400, 16, int(ks[i]), int(ns[j]), max_k=4, max_units=12)
        single = theory.recover(p, int(ks[i]), max_k=4)
        np.testing.assert_allclose(out.recovered.Z_hat_a[i, j], single.Z_hat_a, atol=1e-4)
        assert float(out.recovered.exact_b[i, j]) == pytest.approx(float(single.exact_b))
    exact = np.asarray(out.recovered.exact_a)
    assert exact[0, 2] == 1.0  # K = 1, N = 12: every row
    assert exact[2, 0] < 0.5  # K = 4, N = 4: recovery breaks
    before = sweep.grid._cache_size()
    sweep(jax.random.key(3), ks, ns)
    assert sweep.grid._cache_size() == before


def test_bad_input_is_refused():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="k must be an integer in 1..8"):
        theory.sparse_latents(key, 10, 8, 9)
    with pytest.raises(ValueError, match="n must be an integer in 1..8"):
        theory.equal_mixing(8, 0)
    with pytest.raises(ValueError, match="n_features=10 must be a multiple of group=4"):
        theory.grouped_mixing(10, 4)
    with pytest.raises(ValueError, match="must mix the same number of features"):
        theory.population_correlations(np.eye(4), np.eye(5))
    with pytest.raises(ValueError, match="A_b must have no all-zero column"):
        theory.population_scores(np.eye(4), np.zeros((4, 2)))
    sweep = theory.make_recovery_sweep(100, 8, max_k=2, max_units=4)
    with pytest.raises(ValueError, match=r"ks must lie in 1..2"):
        sweep(key, np.array([1, 3]), np.array([2, 4]))


def test_experiment_guards_fail_before_any_work(tmp_path):
    bad = launch.apply_overrides(configs.tiny(), ["--config.groups=(3,)", "--config.table_group=3"])
    with pytest.raises(ValueError, match="every group must divide n_features=16"):
        experiment.run(bad, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match="table_level must be one of"):
        experiment.validate(launch.apply_overrides(configs.tiny(), ["--config.table_level=3"]))
    run_files.write_json(tmp_path / "other" / "config.json", {"seed": 5})
    with pytest.raises(ValueError, match="another config"):
        experiment.run(configs.tiny(), tmp_path / "other")
    assert not (tmp_path / "other" / "results.json").exists()


# --------------------------------------------------------------------------------------------
# Linear CKA and the rotation score.


@pytest.mark.parametrize("n", range(1, 9))
def test_level_cka_and_rotation_closed_forms(n):
    f = 24
    A_b = theory.equal_mixing(f, n)
    pop = theory.population_scores(np.eye(f), A_b)
    assert pop.cka == pytest.approx(theory.level_cka(f, n), abs=1e-6)
    assert pop.rotation == pytest.approx(theory.level_rotation(f, n), abs=1e-6)
    # The other direction: the same mean singular value.
    assert theory.population_rotation(A_b, np.eye(f)) == pytest.approx(pop.rotation, abs=1e-6)
    # Against an independent float64 numpy computation from the definitions.
    A = np.asarray(A_b, np.float64)
    cka = np.linalg.norm(A) ** 4 / (np.sqrt(f) * np.linalg.norm(A.T @ A)) / np.linalg.norm(A) ** 2
    assert pop.cka == pytest.approx(cka, abs=1e-6)
    assert pop.rotation == pytest.approx(np.linalg.svd(A, compute_uv=False).mean(), abs=1e-6)
    # 1e-6: the permutation score comes from float32 correlations.
    assert pop.permutation <= pop.rotation + 1e-6 <= 1 + 1e-6


@pytest.mark.parametrize("group", [2, 4, 8])
def test_shift_cka_and_rotation_closed_forms(group):
    f = 48
    for shift in range(group + 1):
        A_a, A_b = theory.grouped_mixing(f, group, 0), theory.grouped_mixing(f, group, shift)
        pop = theory.population_scores(A_a, A_b)
        assert pop.cka == pytest.approx(theory.shift_cka(group, shift), abs=1e-6)
        assert pop.rotation == pytest.approx(theory.shift_rotation(f, group, shift), abs=1e-6)
        # 1e-6: the permutation score comes from float32 correlations.
    assert pop.permutation <= pop.rotation + 1e-6 <= 1 + 1e-6


def test_population_cka_and_rotation_against_a_large_sample():
    # Random mixings (correlated, unequal units): numpy's float64 sample CKA and a plain
    # Procrustes fit on a huge Gaussian Z converge to the population values.
    rng = np.random.default_rng(1)
    A_a, A_b = rng.standard_normal((10, 6)), rng.standard_normal((10, 8))
    Z = rng.standard_normal((200_000, 10))
    Xa, Xb = Z @ A_a, Z @ A_b
    Xa, Xb = Xa - Xa.mean(0), Xb - Xb.mean(0)
    cka = np.linalg.norm(Xa.T @ Xb) ** 2 / (np.linalg.norm(Xa.T @ Xa) * np.linalg.norm(Xb.T @ Xb))
    assert theory.population_cka(A_a, A_b) == pytest.approx(cka, abs=0.01)
    Sa, Sb = Xa / Xa.std(0), Xb / Xb.std(0)
    u, _, vt = np.linalg.svd(Sa.T @ Sb, full_matrices=False)
    pred = Sa @ (u @ vt)
    r = [np.corrcoef(pred[:, j], Sb[:, j])[0, 1] for j in range(8)]
    assert theory.population_rotation(A_a, A_b) == pytest.approx(np.mean(r), abs=0.01)


def test_measured_cka_and_rotation_meet_the_closed_forms():
    # The library's cross-validated metrics on samples: within 0.01 of the closed forms, and
    # permutation <= rotation <= 1 (measured) on every construction.
    f = 32
    Z = _latents(20_000, f, 0)
    pairs = [(Z, Z @ theory.equal_mixing(f, n), n, None) for n in (2, 8)]
    pairs.append((Z @ theory.grouped_mixing(f, 2, 0), Z @ theory.grouped_mixing(f, 2, 1), 2, 1))
    for Ya, Yb, n_or_g, shift in pairs:
        if shift is None:
            cka, rot = theory.level_cka(f, n_or_g), theory.level_rotation(f, n_or_g)
        else:
            cka, rot = theory.shift_cka(n_or_g, shift), theory.shift_rotation(f, n_or_g, shift)
        for debiased in (False, True):
            assert superalign.cka(Ya, Yb, debiased=debiased).mean == pytest.approx(cka, abs=0.01)
        measured = superalign.rotation_score(Ya, Yb).mean
        assert measured == pytest.approx(rot, abs=0.01), (n_or_g, shift)
        assert superalign.permutation_score(Ya, Yb).mean <= measured <= 1.0


def test_cka_and_rotation_bad_input_is_refused():
    with pytest.raises(ValueError, match=r"n must be an integer in 1..12"):
        theory.level_cka(24, 13)  # offsets would wrap onto each other
    with pytest.raises(ValueError, match="must mix the same number of features"):
        theory.population_rotation(np.eye(4), np.eye(5))
    with pytest.raises(ValueError, match="A_a must have no all-zero column"):
        theory.population_cka(np.zeros((4, 2)), np.eye(4))
    with pytest.raises(ValueError, match="n_features=10 must be a multiple of group=4"):
        theory.shift_rotation(10, 4, 1)
