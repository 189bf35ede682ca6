"""ADMMPruning: the one callback that drives every phase inside model.fit.

Schedule (in epochs, counted in the wrappers so a reloaded model resumes):
  1. ADMM: the W-step is ordinary training on loss + penalty; every
     ``update_every`` epochs (or steps, ``update_unit="step"``)
     Z <- proj_patterns(W + U), Y <- proj_conn(W + V), U += W - Z,
     V += W - Y; rho grows by ``rho_growth`` (capped at ``rho_max``) at every
     update, or at every epoch end when updating by steps.
  2. Hard prune: W <- W * mask(W), mask frozen, rho = 0.
  3. Masked retraining: pruned weights are reset to exactly zero after every
     optimizer step; with ``retrain_lr_decay="cosine"`` (opt-in) the
     optimizer's learning rate follows a cosine decay from its value at the
     hard prune to 0 over the retraining epochs, then is restored.
Logs gain ``admm_pattern_residual`` and ``admm_connectivity_residual``
(||W - Z||^2 / ||W||^2 summed over layers), so Keras' progress bar and a
TensorBoard callback placed after this one show convergence.

``loss`` stays the task loss (the compiled loss plus the model's own
regularisation losses): the penalty drives the gradient but is logged on its
own as ``admm_penalty`` (its mean over the epoch's samples, summed over the
pruned layers; 0 outside the ADMM phase), so ``loss + admm_penalty`` is the
objective of the W-step. ``evaluate`` (and ``val_loss``) never include it.

At the hard prune the callback prints one line with the last ADMM residuals
and, per layer, the share of ||W||^2 the hard prune removes (mean and max over
the pruned layers); it warns (UserWarning) when a residual exceeds
:attr:`ADMMPruning.LARGE_RESIDUAL`. The per-layer shares are kept in
:attr:`ADMMPruning.hard_prune_residuals`.
"""

from __future__ import annotations

import math
import warnings

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
      admm_epochs: epochs of ADMM before the hard prune; default: 40% of the
        epochs of the first ``fit`` call (rounded up). On the digits benchmark
        40% did better than 60% or 27% (docs/pruning.md): the residuals are
        down to ~0.3% by then, and the rest of the budget trains the final
        sparse network.
      retrain_epochs: masked-retraining epochs after it; default: the rest.
      update_every: epochs (or steps) between Z/U/Y/V updates.
      update_unit: ``"epoch"`` (default) or ``"step"``: the unit of
        ``update_every``. Step updates give ADMM many more dual iterations in a
        short phase; rho then grows once per epoch. With the default rho ramp
        they can pull too hard: on the digits benchmark, updates every 5 steps
        (about 5 per epoch) ended at 97.2% against 99.2% with epoch updates
        (docs/pruning.md); lower ``rho``/``rho_growth`` when using them.
      rho: initial penalty weight; rho_growth, rho_max: its schedule (rho is
        multiplied by ``rho_growth`` at every update, up to ``rho_max``). The
        defaults (1e-2, x2, cap 1) bring the residuals ||W - Z||^2 / ||W||^2
        to a few percent within about 10 epochs with Adam at 1e-3. On the
        digits benchmark (docs/pruning.md) shorter ADMM phases with a faster
        ramp (4 or 6 epochs, rho from 0.1 or 0.05) did worse, not better.
      retrain_lr_decay: None (default) leaves the learning rate alone.
        ``"cosine"``: during masked retraining the optimizer's learning rate
        follows lr0 * (1 + cos(pi * t)) / 2, t going from 0 to 1 over the
        retraining steps, lr0 being its value at the hard prune; it is
        restored when retraining ends, and a reloaded model resumes the curve.
        Skipped when the optimizer uses a LearningRateSchedule. One-shot
        pruning (``admm_epochs=0``) gets the same decay. Off by default: it
        showed no gain on the digits benchmark (docs/pruning.md).
    """

    def __init__(self, admm_epochs: int | None = None, retrain_epochs: int | None = None,
                 update_every: int = 1, rho: float = 1e-2, rho_growth: float = 2.0,
                 rho_max: float = 1.0, retrain_lr_decay: str | None = None,
                 update_unit: str = "epoch"):
        super().__init__()
        for name, value in (("admm_epochs", admm_epochs), ("retrain_epochs", retrain_epochs)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if not isinstance(update_every, int) or update_every < 1:
            raise ValueError(f"update_every must be a positive integer, got {update_every!r}")
        if update_unit not in ("epoch", "step"):
            raise ValueError(f"update_unit must be 'epoch' or 'step', got {update_unit!r}")
        self.update_unit = update_unit
        if not (rho > 0 and rho_growth >= 1 and rho_max >= rho):
            raise ValueError("need rho > 0, rho_growth >= 1 and rho_max >= rho")
        self.admm_epochs, self.retrain_epochs = admm_epochs, retrain_epochs
        self.update_every, self.rho0, self.rho_growth, self.rho_max = (
            update_every, float(rho), float(rho_growth), float(rho_max))
        if retrain_lr_decay not in (None, "cosine"):
            raise ValueError(f"retrain_lr_decay must be 'cosine' or None, got {retrain_lr_decay!r}")
        self.retrain_lr_decay = retrain_lr_decay
        self.wrappers: list[PatternPruning] = []
        self.last_residuals: dict[str, float] = {}
        # Per pruned layer (the wrapped layer's name): share of ||W||^2 removed
        # by the hard prune, set at the hard prune.
        self.hard_prune_residuals: dict[str, float] = {}
        self._base_lr: float | None = None
        self._steps_done = 0

    # --- Keras hooks -----------------------------------------------------------
    def on_train_begin(self, logs=None):
        self.wrappers = find_wrappers(self.model)
        if not self.wrappers:
            raise ValueError("ADMMPruning: the model has no pruned layers; "
                             "call cocopie_tf.prune_patterns(model) first")
        for w in self.wrappers:
            w.driven = True
        if int(_np(self.wrappers[0].phase)) == PHASE_DENSE:
            self._initialise()
        if self.phase == PHASE_ADMM and self.epoch >= self.schedule[0]:
            self._hard_prune()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["admm_penalty"] = self._penalty()
        if self.phase != PHASE_ADMM:
            self._set_all("epoch", self.epoch + 1)
            return
        done = self.epoch + 1
        self._set_all("epoch", done)
        if self.update_unit == "step":
            self._grow_rho()
        elif done % self.update_every == 0:
            self._admm_update()
            self._grow_rho()
        if logs is not None:
            logs.update(self.last_residuals)
        if done >= self.schedule[0]:
            self._hard_prune()

    def on_epoch_begin(self, epoch, logs=None):
        self._steps_done = 0
        for w in self.wrappers:
            w.penalty_tracker.reset_state()

    def on_train_batch_begin(self, batch, logs=None):
        if self.phase == PHASE_MASKED and self.retrain_lr_decay is not None:
            self._decay_lr()

    def on_train_batch_end(self, batch, logs=None):
        self._steps_done += 1
        # The progress bar (verbose=1) shows batch logs: give it the running
        # penalty too. Other verbosities only see the epoch logs.
        if logs is not None and (self.params or {}).get("verbose", 1) not in (0, 2):
            logs["admm_penalty"] = self._penalty()
        if self.update_unit == "step" and self._steps_done % self.update_every == 0 \
                and self.phase == PHASE_ADMM:
            self._admm_update()
        if self.phase == PHASE_MASKED:
            for w in self.wrappers:
                kernel = prunable_kernel(w.layer)
                kernel.assign(ops.multiply(kernel, w.mask))

    def on_train_end(self, logs=None):
        for w in self.wrappers:
            w.driven = False
        # Retraining finished: give the optimizer its learning rate back, so a
        # later fit (fine-tuning, another callback) starts from the user's value.
        if self._base_lr is not None and self.wrappers and self.phase == PHASE_MASKED:
            admm, retrain = self.schedule
            if self.epoch >= admm + retrain:
                self._lr_variable().assign(self._base_lr)
                self._base_lr = None

    # --- learning-rate decay of the masked retraining ---------------------------
    def _lr_variable(self):
        opt = getattr(self.model, "optimizer", None)
        lr = getattr(opt, "_learning_rate", None) if opt is not None else None
        if lr is None or isinstance(lr, keras.optimizers.schedules.LearningRateSchedule) \
                or not hasattr(lr, "assign"):
            return None
        return lr

    def _cosine(self, t: float) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(max(t, 0.0), 1.0)))

    def _decay_lr(self):
        var = self._lr_variable()
        if var is None:  # a schedule object or no optimizer: leave the LR alone
            return
        admm, retrain = self.schedule
        steps = int((self.params or {}).get("steps") or 0)
        if retrain <= 0 or steps <= 0:
            return
        position = (self.epoch - admm) + self._steps_done / steps  # retrain epochs done
        if position >= retrain:
            return
        if self._base_lr is None:
            current = float(_np(var))
            # Resuming mid-retraining (a reloaded model, a fresh callback): the
            # optimizer holds the decayed rate of the last step taken; undo it.
            prev = self._cosine((position - 1.0 / steps) / retrain) if position > 0 else 1.0
            self._base_lr = current / max(prev, 1e-12)
        var.assign(self._base_lr * self._cosine(position / retrain))

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

    def _penalty(self) -> float:
        """The penalty's mean over this epoch's training samples, summed over
        the pruned layers (0 once hard-pruned: rho is 0 then)."""
        return float(sum(_np(w.penalty_tracker.result()) for w in self.wrappers))

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
        admm = self.admm_epochs if self.admm_epochs is not None else max(1, math.ceil(0.4 * epochs))
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
            w.z.assign(z)
            w.y.assign(y)
            w.u.assign(u + wv - z)
            w.v.assign(v + wv - y)
            num_z += float(np.sum((wv - z) ** 2))
            num_y += float(np.sum((wv - y) ** 2))
            den += float(np.sum(wv**2))
        den = max(den, 1e-30)
        self.last_residuals = {"admm_pattern_residual": num_z / den,
                               "admm_connectivity_residual": num_y / den}

    def _grow_rho(self):
        for w in self.wrappers:
            rho = float(_np(w.rho))
            new_rho = min(rho * self.rho_growth, self.rho_max)
            # U, V are scaled duals (lambda / rho): rescale them when rho changes.
            scale = rho / new_rho
            w.u.assign(_np(w.u) * scale)
            w.v.assign(_np(w.v) * scale)
            w.rho.assign(new_rho)

    # Above this relative residual ||W - proj(W)||^2 / ||W||^2 more of the
    # weights' energy is outside the constraints than inside: ADMM had barely
    # started (the demo's 6-epoch schedule hard-prunes at 0.32 / 0.48 and
    # retrains back to dense accuracy; 2 epochs in total gave 0.35 / 0.63).
    # Compared with the last ADMM residuals (pattern, connectivity; over the
    # model) and with the worst layer's share of ||W||^2 removed by the hard
    # prune itself (both constraints at once): the demo's hard prune removes
    # 0.28-0.45 per layer (no warning), 1-2 ADMM epochs from random weights
    # (the tests) about 0.71.
    LARGE_RESIDUAL = 0.5

    def _hard_prune(self):
        removed: dict[str, float] = {}
        for w in self.wrappers:
            value = w.kernel_value()
            pat, conn = w.masks_for(value)
            mask = (pat & conn).astype(value.dtype)
            v64 = value.astype("float64")
            removed[w.layer.name] = float(np.sum((v64 * (1 - mask)) ** 2)) / max(
                float(np.sum(v64**2)), 1e-30)
            prunable_kernel(w.layer).assign(value * mask)
            w.mask.assign(mask)
            w.rho.assign(0.0)
            w.phase.assign(PHASE_MASKED)
        self.hard_prune_residuals = removed
        if self.epoch > 0:  # ADMM ran (one-shot pruning has nothing to report)
            self._report_hard_prune(removed)

    def _report_hard_prune(self, removed: dict[str, float]):
        res = self.last_residuals
        worst = max(removed, key=removed.get)
        mean, top = float(np.mean(list(removed.values()))), removed[worst]
        admm = (f"relative residuals pattern {res.get('admm_pattern_residual', 0.0):.3f}, "
                f"connectivity {res.get('admm_connectivity_residual', 0.0):.3f}; "
                if res else "")
        print(f"ADMMPruning: hard prune after {self.epoch} ADMM epoch(s); {admm}share of "
              f"||W||^2 removed per layer: mean {mean:.3f}, max {top:.3f} ({worst}), "
              f"{len(removed)} layer(s)")
        large = {k: v for k, v in res.items() if v > self.LARGE_RESIDUAL}
        if top > self.LARGE_RESIDUAL:
            large[f"hard prune of {worst}"] = top
        if large:
            what = ", ".join(f"{k.replace('admm_', '').replace('_residual', '')} {v:.0%}"
                             for k, v in large.items())
            warnings.warn(
                f"ADMMPruning: hard-pruning at large residuals ({what} of the weights' energy "
                f"is outside the constraints; threshold {self.LARGE_RESIDUAL:.0%}), so the "
                "masked retraining has to recover most of the network. If accuracy stays "
                "low, give ADMM more epochs before the hard prune (admm_epochs=...), a larger "
                "rho or rho_growth, or more retraining epochs.", UserWarning, stacklevel=2)


def prune_oneshot(model, **prune_options):
    """Pattern + connectivity pruning in one step, no ADMM: wraps ``model``
    like :func:`cocopie_tf.prune_patterns` (same options), chooses the pattern
    library from the current weights and projects every wrapped kernel onto
    it. The result is hard-pruned (its masks hold in any later ``fit``):
    retrain it with masked fine-tuning if you like, then ``strip_pruning``."""
    from cocopie_tf.pruning.api import prune_patterns

    wrapped = prune_patterns(model, **prune_options)
    driver = ADMMPruning(admm_epochs=0, retrain_epochs=0)
    driver.set_model(wrapped)
    driver.on_train_begin()  # chooses the library, then hard-prunes (admm_epochs=0)
    driver.on_train_end()
    return wrapped
