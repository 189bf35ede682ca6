"""Kernel patterns and connectivity (numpy only, no Keras).

A *pattern* is the set of positions a k_h x k_w kernel keeps. PatDNN keeps 4 of
9 entries of a 3x3 kernel, always including the centre: C(8, 3) = 56
candidates. A model uses a small *library* of K patterns (8 by default) chosen
from its trained weights by natural frequency. *Connectivity pruning* removes
whole kernels (input channel -> output channel connections).

Kernels are passed as arrays ``[..., k_h, k_w]``; every leading axis is just a
kernel index. Patterns are boolean arrays ``[P, k_h, k_w]``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

__all__ = [
    "candidate_patterns",
    "select_library",
    "project_to_library",
    "connectivity_mask",
    "pattern_ids",
    "prune_kernel",
    "kernel_masks",
]


def candidate_patterns(kernel_size=(3, 3), entries: int = 4, keep_center: bool = True) -> np.ndarray:
    """All patterns of ``entries`` kept positions in a ``kernel_size`` kernel.

    With ``keep_center`` (odd sizes only) the centre is always kept, as in
    PatDNN: 3x3 with 4 entries gives C(8, 3) = 56 candidates.
    """
    kh, kw = _kernel_size(kernel_size)
    cells = kh * kw
    if not isinstance(entries, (int, np.integer)) or entries < 1:
        raise ValueError(f"entries must be a positive integer, got {entries!r}")
    if entries > cells:
        raise ValueError(f"entries={entries} is larger than the {kh}x{kw} kernel ({cells} positions)")
    if keep_center and (kh % 2 == 0 or kw % 2 == 0):
        raise ValueError(f"keep_center needs an odd kernel size, got {kh}x{kw}")
    center = (kh // 2) * kw + kw // 2
    others = [i for i in range(cells) if not (keep_center and i == center)]
    need = entries - 1 if keep_center else entries
    count = math.comb(len(others), need)
    if count > 100_000:
        raise ValueError(f"{count} candidate patterns for {kh}x{kw} with {entries} entries is too many")
    out = np.zeros((count, cells), bool)
    for row, combo in enumerate(itertools.combinations(others, need)):
        out[row, list(combo)] = True
        if keep_center:
            out[row, center] = True
    return out.reshape(count, kh, kw)


def _kernel_size(kernel_size):
    if isinstance(kernel_size, (int, np.integer)):
        kernel_size = (int(kernel_size), int(kernel_size))
    kh, kw = (int(k) for k in kernel_size)
    if kh < 1 or kw < 1:
        raise ValueError(f"kernel_size must be positive, got {kernel_size!r}")
    return kh, kw


def _as_kernels(kernels, shape) -> np.ndarray:
    k = np.asarray(kernels, np.float64)
    if k.ndim < 2 or k.shape[-2:] != tuple(shape):
        raise ValueError(f"kernels must have shape [..., {shape[0]}, {shape[1]}], got {k.shape}")
    return k.reshape(-1, shape[0] * shape[1])


def _best_candidate(flat: np.ndarray, patterns: np.ndarray) -> np.ndarray:
    """Index of the pattern that keeps the most L2 energy of each kernel."""
    masks = patterns.reshape(len(patterns), -1).astype(np.float64)
    return np.argmax((flat * flat) @ masks.T, axis=1)


def select_library(kernels, num_patterns: int = 8, candidates: np.ndarray | None = None,
                   entries: int = 4, keep_center: bool = True) -> np.ndarray:
    """Chooses the ``num_patterns`` most frequent patterns of trained kernels.

    Each non-zero kernel votes for the candidate that retains most of its L2
    energy (for 4-of-9 with centre: the centre plus its 3 largest other
    entries); the most voted candidates form the library, most frequent first.
    """
    kernels = np.asarray(kernels)
    if kernels.ndim < 2:
        raise ValueError(f"kernels must have shape [..., k_h, k_w], got {kernels.shape}")
    shape = kernels.shape[-2:]
    if candidates is None:
        candidates = candidate_patterns(shape, entries, keep_center)
    candidates = _check_patterns(candidates, shape, "candidates")
    if not isinstance(num_patterns, (int, np.integer)) or num_patterns < 1:
        raise ValueError(f"num_patterns must be a positive integer, got {num_patterns!r}")
    if num_patterns > len(candidates):
        raise ValueError(
            f"num_patterns={num_patterns} is more than the {len(candidates)} candidate patterns")
    flat = _as_kernels(kernels, shape)
    flat = flat[np.any(flat != 0, axis=1)]
    votes = np.bincount(_best_candidate(flat, candidates), minlength=len(candidates))
    # Stable: ties keep candidate order, so the result is deterministic.
    order = np.argsort(-votes, kind="stable")[:num_patterns]
    return candidates[order]


def _check_patterns(patterns, shape, name) -> np.ndarray:
    p = np.asarray(patterns)
    if p.ndim == 2:
        p = p[None]
    if p.ndim != 3 or p.shape[1:] != tuple(shape):
        raise ValueError(f"{name} must have shape [P, {shape[0]}, {shape[1]}], got {p.shape}")
    if len(p) == 0:
        raise ValueError(f"{name} is empty")
    p = p.astype(bool)
    if not p.reshape(len(p), -1).any(axis=1).all():
        raise ValueError(f"{name} contains an empty pattern")
    return p


def project_to_library(kernels, library) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean projection of every kernel onto the library.

    Returns ``(projected, ids)``: each kernel keeps only the positions of the
    library pattern that retains the largest L2 norm (``ids`` indexes the
    library; all-zero kernels get id -1 and stay zero).
    """
    kernels = np.asarray(kernels)
    shape = kernels.shape[-2:]
    library = _check_patterns(library, shape, "library")
    flat = _as_kernels(kernels, shape)
    ids = _best_candidate(flat, library)
    mask = library.reshape(len(library), -1)[ids]
    projected = np.where(mask, flat, 0.0)
    ids = np.where(np.any(flat != 0, axis=1), ids, -1)
    return projected.reshape(kernels.shape).astype(kernels.dtype, copy=False), ids.reshape(kernels.shape[:-2])


def connectivity_mask(kernels, rate: float) -> np.ndarray:
    """Keeps the strongest ``ceil(N / rate)`` of N kernels by L2 norm.

    ``rate`` is the connectivity pruning rate (3.6 keeps 1 kernel in 3.6).
    Returns a boolean array over the kernel axes (``kernels.shape[:-2]``).
    """
    if not np.isfinite(rate) or rate < 1:
        raise ValueError(f"connectivity rate must be >= 1, got {rate!r}")
    kernels = np.asarray(kernels)
    flat = _as_kernels(kernels, kernels.shape[-2:])
    n = len(flat)
    keep = min(n, max(1, math.ceil(n / rate)))
    norms = np.einsum("ij,ij->i", flat, flat)
    # Stable order on ties so the mask is deterministic.
    order = np.argsort(-norms, kind="stable")
    mask = np.zeros(n, bool)
    mask[order[:keep]] = True
    return mask.reshape(kernels.shape[:-2])


def pattern_ids(kernels, library) -> np.ndarray:
    """Library index of each kernel's exact non-zero set; -1 for all-zero
    kernels, -2 for kernels whose zeros match no library pattern."""
    kernels = np.asarray(kernels)
    shape = kernels.shape[-2:]
    library = _check_patterns(library, shape, "library")
    nz = _as_kernels(kernels, shape) != 0
    lib = library.reshape(len(library), -1)
    ids = np.full(len(nz), -2)
    # A kernel matches a pattern when its non-zeros lie inside it (a pruned
    # weight can also be exactly zero by chance, so only containment is asked).
    inside = ~np.any(nz[:, None, :] & ~lib[None, :, :], axis=2)
    has = inside.any(axis=1)
    ids[has] = np.argmax(inside[has], axis=1)
    ids[~nz.any(axis=1)] = -1
    return ids.reshape(kernels.shape[:-2])


def kernel_masks(kernel_hwio, library, connectivity: float | None = None,
                 group: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The pattern mask and the connectivity mask of a conv kernel (HWIO).

    Pattern mask: every kernel (one input -> one output channel) keeps the
    library pattern that retains most of its energy; with ``group > 1`` each
    run of ``group`` consecutive filters shares one pattern per input channel,
    chosen from the group's joint energy. Connectivity mask: the strongest
    ``1/connectivity`` of the (pattern-projected, grouped) kernels; all True
    when ``connectivity`` is None. Both are boolean arrays shaped like the kernel.
    """
    k = np.asarray(kernel_hwio)
    if k.ndim != 4:
        raise ValueError(f"kernel_hwio must be 4-D (kh, kw, in, out), got shape {k.shape}")
    kh, kw, ic, oc = k.shape
    if not isinstance(group, (int, np.integer)) or group < 1 or oc % group:
        raise ValueError(f"group={group!r} must be a positive divisor of the {oc} filters")
    library = _check_patterns(library, (kh, kw), "library")
    kern = np.transpose(k, (3, 2, 0, 1)).astype(np.float64)  # [oc, ic, kh, kw]
    grouped = kern.reshape(oc // group, group, ic, kh, kw)
    energy = np.sqrt((grouped**2).sum(axis=1))  # one kernel per group and channel
    _, ids = project_to_library(energy, library)
    pattern = library[np.maximum(ids, 0)] & (ids >= 0)[..., None, None]
    if connectivity is None:
        conn = np.ones(energy.shape[:2], bool)
    else:
        conn = connectivity_mask(energy * pattern, connectivity)
    def to_hwio(m):  # [oc/g, ic, kh, kw] -> HWIO, repeated over the group
        full = np.broadcast_to(m[:, None], (oc // group, group, ic, kh, kw)).reshape(oc, ic, kh, kw)
        return np.ascontiguousarray(np.transpose(full, (2, 3, 1, 0)))
    return to_hwio(pattern), to_hwio(np.broadcast_to(conn[..., None, None], pattern.shape))


def prune_kernel(kernel_hwio, *, library=None, num_patterns: int = 8,
                 connectivity: float | None = 3.6, group: int = 1) -> np.ndarray:
    """One-shot pattern + connectivity pruning of a Keras conv kernel (HWIO).

    The projection ADMM converges to, applied once (no training): every kernel
    is projected onto the library (chosen from the kernel itself by natural
    frequency unless given), then the strongest ``1/connectivity`` of the
    kernels are kept (see :func:`kernel_masks`). Returns a new array of the
    same shape and dtype.
    """
    k = np.asarray(kernel_hwio)
    if library is None:
        if k.ndim != 4:
            raise ValueError(f"kernel_hwio must be 4-D (kh, kw, in, out), got shape {k.shape}")
        library = select_library(np.transpose(k, (3, 2, 0, 1)), num_patterns=num_patterns)
    pattern, conn = kernel_masks(k, library, connectivity, group)
    return np.where(pattern & conn, k, 0).astype(k.dtype)
