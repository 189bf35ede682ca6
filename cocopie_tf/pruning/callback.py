"""ADMMPruning: the one callback that drives every phase inside model.fit.

Schedule (in epochs, counted in the wrappers so a reloaded model resumes):
  1. ADMM: the W-step is ordinary training on loss + penalty; every
     ``update_every`` epochs Z <- proj_patterns(W + U), Y <- proj_conn(W + V),
     U += W - Z, V += W - Y, rho grows by ``rho_growth`` (capped at ``rho_max``).
  2. Hard prune: W <- W * mask(W), mask frozen, rho = 0.
  3. Masked retraining: pruned weights are reset to exactly zero after every
     optimizer step.
Logs gain ``admm_pattern_residual`` and ``admm_connectivity_residual``
(||W - Z||^2 / ||W||^2 summed over layers), so Keras' progress bar and a
TensorBoard callback placed after this one show convergence.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from cocopie_tf import patterns as P
from cocopie_tf.pruning.wrapper import (
    PHASE_ADMM,
    PHASE_DENSE,
    PHASE_MASKED,
    PatternPruning,
    as_hwio,
    prunable_kernel,
)


def find_wrappers(model) -> list[PatternPruning]:
    found = []
    for layer in model.layers:
        if isinstance(layer, PatternPruning):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found += find_wrappers(layer)
    return found


def _np(x) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(x))


class ADMMPruning(keras.callbacks.Callback):
    """Drives ADMM pattern + connectivity pruning within ``model.fit``.

    Args:
      admm_epochs: epochs of ADMM before the hard prune; default: 60% of the
        epochs of the first ``fit`` call.
      retrain_epochs: masked-retraining epochs after it; default: the rest.
      update_every: epochs between Z/U/Y/V updates.
      rho: initial penalty weight; rho_growth, rho_max: its schedule.
    """

    def __init__(self, admm_epochs: int | None = None, retrain_epochs: int | None = None,
                 update_every: int = 1, rho: float = 1e-2, rho_growth: float = 2.0,
                 rho_max: float = 1.0):
        super().__init__()
        for name, value in (("admm_epochs", admm_epochs), ("retrain_epochs", retrain_epochs)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if not isinstance(update_every, int) or update_every < 1:
            raise ValueError(f"update_every must be a positive integer, got {update_every!r}")
        if not (rho > 0 and rho_growth >= 1 and rho_max >= rho):
            raise ValueError("need rho > 0, rho_growth >= 1 and rho_max >= rho")
        self.admm_epochs, self.retrain_epochs = admm_epochs, retrain_epochs
        self.update_every, self.rho0, self.rho_growth, self.rho_max = (
            update_every, float(rho), float(rho_growth), float(rho_max))
        self.wrappers: list[PatternPruning] = []
        self.last_residuals: dict[str, float] = {}

    # --- Keras hooks -----------------------------------------------------------
    def on_train_begin(self, logs=None):
        self.wrappers = find_wrappers(self.model)
        if not self.wrappers:
            raise ValueError("ADMMPruning: the model has no pruned layers; "
                             "call cocopie_tf.prune_patterns(model) first")
        if int(_np(self.wrappers[0].phase)) == PHASE_DENSE:
            self._initialise()
        if self.phase == PHASE_ADMM and self.epoch >= self.schedule[0]:
            self._hard_prune()

    def on_epoch_end(self, epoch, logs=None):
        if self.phase != PHASE_ADMM:
            self._set_all("epoch", self.epoch + 1)
            return
        done = self.epoch + 1
        self._set_all("epoch", done)
        if done % self.update_every == 0:
            self._admm_update()
        if logs is not None:
            logs.update(self.last_residuals)
        if done >= self.schedule[0]:
            self._hard_prune()

    def on_train_batch_end(self, batch, logs=None):
        if self.phase == PHASE_MASKED:
            for w in self.wrappers:
                kernel = prunable_kernel(w.layer)
                kernel.assign(ops.multiply(kernel, w.mask))

    # --- state -----------------------------------------------------------------
    @property
    def phase(self) -> int:
        return int(_np(self.wrappers[0].phase))

    @property
    def epoch(self) -> int:
        return int(_np(self.wrappers[0].epoch))

    @property
    def schedule(self) -> tuple[int, int]:
        a, r = _np(self.wrappers[0].schedule)
        return int(a), int(r)

    def _set_all(self, name, value):
        for w in self.wrappers:
            getattr(w, name).assign(value)

    def summary(self) -> dict:
        """Phase, schedule position, rho and the last residuals (for logging)."""
        names = {PHASE_DENSE: "dense", PHASE_ADMM: "admm", PHASE_MASKED: "masked"}
        return {"phase": names[self.phase], "epoch": self.epoch, "schedule": self.schedule,
                "rho": float(_np(self.wrappers[0].rho)), **self.last_residuals}

    def _initialise(self):
        epochs = int(self.params.get("epochs", 1)) if self.params else 1
        admm = self.admm_epochs if self.admm_epochs is not None else max(1, math.ceil(0.6 * epochs))
        retrain = self.retrain_epochs if self.retrain_epochs is not None else max(0, epochs - admm)
        # One library per kernel shape, chosen over the whole model by natural
        # frequency (unless prune_patterns was given one).
        by_shape: dict[tuple, list[PatternPruning]] = {}
        for w in self.wrappers:
            by_shape.setdefault(tuple(w.library.shape), []).append(w)
        for shape, ws in by_shape.items():
            if np.any(_np(ws[0].library)):
                continue
            kernels = np.concatenate([
                np.transpose(as_hwio(w.layer, w.kernel_value()), (3, 2, 0, 1)).reshape(-1, *shape[1:])
                for w in ws])
            cands = ws[0].candidates(shape[1:])
            lib = P.select_library(kernels, num_patterns=shape[0], candidates=cands)
            for w in ws:
                w.library.assign(lib.astype("float32"))
        for w in self.wrappers:
            value = w.kernel_value()
            pat, conn = w.masks_for(value)
            w.z.assign(value * pat)
            w.y.assign(value * conn)
            w.u.assign(np.zeros_like(value))
            w.v.assign(np.zeros_like(value))
            w.rho.assign(self.rho0)
            w.phase.assign(PHASE_ADMM)
            w.epoch.assign(0)
            w.schedule.assign(np.array([admm, retrain], "int32"))
        if admm == 0:
            self._hard_prune()

    def _admm_update(self):
        num_z = num_y = den = 0.0
        for w in self.wrappers:
            wv, u, v = w.kernel_value(), _np(w.u), _np(w.v)
            pat, _ = w.masks_for(wv + u, connectivity=False)
            z = (wv + u) * pat
            _, conn = w.masks_for(wv + v)
            y = (wv + v) * conn
            rho = float(_np(w.rho))
            new_rho = min(rho * self.rho_growth, self.rho_max)
            # U, V are scaled duals (lambda / rho): rescale them when rho changes.
            scale = rho / new_rho
            w.z.assign(z)
            w.y.assign(y)
            w.u.assign((u + wv - z) * scale)
            w.v.assign((v + wv - y) * scale)
            w.rho.assign(new_rho)
            num_z += float(np.sum((wv - z) ** 2))
            num_y += float(np.sum((wv - y) ** 2))
            den += float(np.sum(wv**2))
        den = max(den, 1e-30)
        self.last_residuals = {"admm_pattern_residual": num_z / den,
                               "admm_connectivity_residual": num_y / den}

    def _hard_prune(self):
        for w in self.wrappers:
            value = w.kernel_value()
            pat, conn = w.masks_for(value)
            mask = (pat & conn).astype(value.dtype)
            prunable_kernel(w.layer).assign(value * mask)
            w.mask.assign(mask)
            w.rho.assign(0.0)
            w.phase.assign(PHASE_MASKED)
