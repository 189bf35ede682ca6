"""cocopie_tf.patterns: candidates, library selection, projection, connectivity."""

from __future__ import annotations


import numpy as np
import pytest

from cocopie_tf import patterns as P


def test_56_candidates_for_3x3_with_centre():
    c = P.candidate_patterns()
    assert c.shape == (56, 3, 3)
    assert c[:, 1, 1].all() and (c.reshape(56, -1).sum(1) == 4).all()
    assert len({p.tobytes() for p in c}) == 56


def test_candidate_options():
    assert len(P.candidate_patterns(keep_center=False)) == 126  # C(9, 4)
    assert len(P.candidate_patterns((5, 5), entries=6)) == 42504  # C(24, 5)
    assert len(P.candidate_patterns((1, 1), entries=1)) == 1


def test_projection_matches_brute_force():
    rng = np.random.default_rng(0)
    kernels = rng.standard_normal((200, 3, 3))
    lib = P.candidate_patterns()[rng.choice(56, 8, replace=False)]
    proj, ids = P.project_to_library(kernels, lib)
    for k, p, i in zip(kernels, proj, ids):
        # Brute force: the pattern retaining the largest norm, float64.
        best = max(range(8), key=lambda j: np.sum(k[lib[j]] ** 2))
        assert i == best
        np.testing.assert_array_equal(p, np.where(lib[best], k, 0))


def test_library_by_natural_frequency():
    rng = np.random.default_rng(1)
    cands = P.candidate_patterns()
    favourites = [3, 17, 40]
    # Kernels built to prefer three known patterns, 50/30/20 %.
    kernels = []
    for idx, n in zip(favourites, (50, 30, 20)):
        for _ in range(n):
            k = rng.uniform(0.0, 0.1, (3, 3))
            k[cands[idx]] += rng.uniform(1, 2, 4)
            kernels.append(k)
    lib = P.select_library(np.array(kernels), num_patterns=3)
    for got, want in zip(lib, favourites):
        np.testing.assert_array_equal(got, cands[want])


def test_connectivity_keeps_the_strongest():
    rng = np.random.default_rng(2)
    k = rng.standard_normal((16, 8, 3, 3))
    mask = P.connectivity_mask(k, 3.6)
    assert mask.shape == (16, 8) and mask.sum() == int(np.ceil(128 / 3.6))
    norms = np.sqrt((k**2).sum((-1, -2)))
    assert norms[mask].min() >= norms[~mask].max()


def test_pattern_ids_recognises_projected_kernels():
    rng = np.random.default_rng(3)
    lib = P.candidate_patterns()[:8]
    proj, ids = P.project_to_library(rng.standard_normal((4, 5, 3, 3)), lib)
    proj[0, 0] = 0
    got = P.pattern_ids(proj, lib)
    assert got[0, 0] == -1
    assert (got.ravel()[1:] == ids.ravel()[1:]).all()
    dense = rng.standard_normal((2, 3, 3))
    assert (P.pattern_ids(dense, lib) == -2).all()


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: P.connectivity_mask(np.ones((4, 3, 3)), 0.5), "connectivity rate"),
        (lambda: P.select_library(np.ones((4, 3, 3)), num_patterns=57), "num_patterns=57"),
        (lambda: P.candidate_patterns(entries=10), "entries=10"),
        (lambda: P.candidate_patterns((4, 4), keep_center=True), "keep_center"),
        (lambda: P.project_to_library(np.ones((4, 3, 3)), np.ones((2, 5, 5), bool)), "library"),
    ],
)
def test_bad_arguments_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
