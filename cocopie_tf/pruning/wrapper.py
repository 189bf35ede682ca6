"""The wrapper layer that owns a pruned layer's ADMM state.

The maths lives in :mod:`cocopie_tf.patterns` (numpy, Keras-free); this layer
holds the state as non-trainable weights, so it is saved with the model and
survives ``keras.models.load_model``, and adds the augmented-Lagrangian penalty

    rho/2 ||W - Z + U||_F^2 + rho/2 ||W - Y + V||_F^2

to the gradient of the training loss, not to its value: the term added with
``add_loss`` is ``penalty - stop_gradient(penalty)`` (exactly 0, gradient the
penalty's), so fit's ``loss`` stays the task loss (compiled loss plus the
user's own regularisation) and ``evaluate`` never sees the penalty.  The
penalty's value goes to :attr:`PatternPruning.penalty_tracker` (a Mean over the
samples of the epoch), which :class:`ADMMPruning` logs as ``admm_penalty``.
Z/U belong to the pattern constraint, Y/V to the connectivity constraint.  The
callback :class:`ADMMPruning` drives the phases.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
from keras import ops

from cocopie_tf import patterns as P

PHASE_DENSE, PHASE_ADMM, PHASE_MASKED = 0, 1, 2


def prunable_kernel(layer):
    """The variable to prune: ``layer.get_prunable_kernel()`` for layers that
    opt in (see :class:`cocopie_tf.PrunableLayer`), else ``layer.kernel``."""
    if hasattr(layer, "get_prunable_kernel"):
        return layer.get_prunable_kernel()
    return layer.kernel


def as_hwio(layer, value: np.ndarray) -> np.ndarray:
    """A kernel seen as conv HWIO: depthwise [kh, kw, in, mult] becomes
    [kh, kw, 1, in*mult] (every depthwise kernel is a filter of one input)."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw, c, m = value.shape
        return value.reshape(kh, kw, 1, c * m)
    return value


@keras.saving.register_keras_serializable(package="cocopie_tf")
class PatternPruning(keras.layers.Wrapper):
    """Wraps a Conv2D / DepthwiseConv2D (or a PrunableLayer) for pattern +
    connectivity pruning.

    Args:
      layer: the layer to prune.
      num_patterns: library size K (patterns shared by the whole model).
      entries: weights kept per kernel (4 of 9 for 3x3).
      keep_center: always keep the kernel centre (PatDNN).
      connectivity: connectivity pruning rate (keep 1 kernel in ``rate``);
        None or 1 disables it.
      group: filters per group sharing one mask per input channel (1 = none).
    """

    def __init__(self, layer, num_patterns=8, entries=4, keep_center=True, connectivity=3.6,
                 group=1, **kwargs):
        super().__init__(layer, **kwargs)
        self.num_patterns = int(num_patterns)
        self.entries = int(entries)
        self.keep_center = bool(keep_center)
        self.connectivity = None if connectivity in (None, 1, 1.0) else float(connectivity)
        self.group = int(group)

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        kernel = prunable_kernel(self.layer)
        shape = tuple(kernel.shape)
        kh, kw = shape[0], shape[1]
        n_lib = min(self.num_patterns, len(self.candidates((kh, kw))))

        def state(name, shape_, init="zeros", dtype="float32"):
            return self.add_weight(name=name, shape=shape_, initializer=init, dtype=dtype,
                                   trainable=False)

        self.z = state("admm_z", shape)
        self.u = state("admm_u", shape)
        self.y = state("admm_y", shape)
        self.v = state("admm_v", shape)
        self.mask = state("mask", shape, "ones")
        self.library = state("library", (n_lib, kh, kw))
        self.rho = state("rho", ())
        self.phase = state("phase", (), dtype="int32")
        self.epoch = state("epoch", (), dtype="int32")  # schedule position
        self.schedule = state("schedule", (2,), dtype="int32")  # ADMM, retrain epochs
        # The optimizer applies a variable's constraint after every update, so
        # the mask holds in any fit, with or without ADMMPruning (the mask is
        # all ones until hard pruning).
        inner = kernel.constraint
        mask = self.mask
        kernel.constraint = (lambda w: ops.multiply(inner(w), mask)) if inner is not None \
            else (lambda w: ops.multiply(w, mask))
        self.driven = False  # set by ADMMPruning while it runs the schedule
        self._warned = False
        # The penalty's mean over the training samples since the last reset
        # (ADMMPruning resets it every epoch and logs the sum over layers as
        # ``admm_penalty``). Deliberately not tracked by Keras: a layer metric
        # would join model.metrics, i.e. evaluate()'s results, and nested
        # models drop their layers' metrics; it is not saved either.
        object.__setattr__(self, "penalty_tracker",
                           keras.metrics.Mean(name=f"{self.name}_admm_penalty"))
        super().build(input_shape)

    def candidates(self, kernel_size):
        kh, kw = kernel_size
        if kh * kw == 1:
            return np.ones((1, 1, 1), bool)
        entries = min(self.entries, kh * kw)
        return P.candidate_patterns((kh, kw), entries, self.keep_center and kh % 2 == 1 and kw % 2 == 1)

    def call(self, inputs, training=None):
        outputs = self.layer(inputs, training=training)
        if training and not self.driven and not self._warned:
            self._warn_if_schedule_stalled()
        if training:
            w = prunable_kernel(self.layer)
            penalty = 0.5 * self.rho * (ops.sum(ops.square(w - self.z + self.u)) + ops.sum(
                ops.square(w - self.y + self.v)))
            # rho is 0 outside the ADMM phase, so the penalty vanishes there.
            # Its gradient drives the W-step, its value (exactly 0 here) does
            # not enter the logged loss; the value is tracked on its own, per
            # sample like Keras' loss tracker, so that loss + admm_penalty is
            # the augmented Lagrangian the optimizer minimises.
            self.add_loss(penalty - ops.stop_gradient(penalty))
            batch = ops.cast(ops.shape(keras.tree.flatten(inputs)[0])[0], "float32")
            self.penalty_tracker.update_state(ops.stop_gradient(penalty), sample_weight=batch)
        return outputs

    def _warn_if_schedule_stalled(self):
        import tensorflow as tf

        with tf.init_scope():  # read the phase even while fit traces this call
            phase = int(self.phase.value.numpy())
        if phase != PHASE_MASKED:
            self._warned = True
            warnings.warn(
                f"{self.name}: training a pattern-pruned layer without the ADMMPruning "
                f"callback; the pruning schedule (phase "
                f"{'dense' if phase == PHASE_DENSE else 'admm'}) does not advance, so the "
                "model will not become pattern-pruned. Pass callbacks=[cocopie_tf.ADMMPruning()] "
                "to fit.", UserWarning, stacklevel=3)

    # --- numpy views used by the callback and the report -------------------
    def kernel_value(self) -> np.ndarray:
        return np.asarray(ops.convert_to_numpy(prunable_kernel(self.layer)))

    def masks_for(self, value: np.ndarray, connectivity=True) -> tuple[np.ndarray, np.ndarray]:
        """(pattern mask, connectivity mask) of ``value`` in the kernel's own shape."""
        hwio = as_hwio(self.layer, value)
        lib = np.asarray(ops.convert_to_numpy(self.library)).astype(bool)
        group = self.group if hwio.shape[3] % self.group == 0 and hwio.shape[2] > 1 else 1
        pat, conn = P.kernel_masks(hwio, lib, self.connectivity if connectivity else None, group)
        return pat.reshape(value.shape), conn.reshape(value.shape)

    def get_config(self):
        return {**super().get_config(), "num_patterns": self.num_patterns,
                "entries": self.entries, "keep_center": self.keep_center,
                "connectivity": self.connectivity, "group": self.group}
