"""cocopie_tf: CoCoPIE-style compression-compilation co-design for TensorFlow.

Pattern and connectivity pruning for Keras 3 models, and a TFLite delegate
that runs the pruned convolutions with pattern-aware kernels on CPU.

Public API (kept small on purpose):

* ``cocopie_tf.lite``: ``delegate_path``, ``load_delegate``, ``Interpreter``.
* ``prune_patterns``, ``ADMMPruning``, ``strip_pruning``, ``pruning_report``:
  ADMM pattern + connectivity pruning of Keras 3 models inside ``model.fit``.
* ``cocopie_tf.patterns``: pattern candidates, library selection, projection,
  connectivity, one-shot ``prune_kernel``.
* ``cocopie_tf.tune``: CoCo-Tune pruning search (find_modules,
  sample_candidates, select_blocks, pretrain_blocks, assemble, search).

Importing the package imports neither TensorFlow nor
tensorflow-model-optimization; submodules that need TensorFlow import it
themselves.
"""

from cocopie_tf import lite, patterns, tune


def __getattr__(name):
    # The Keras API imports TensorFlow/Keras; load it on first use only, so
    # `import cocopie_tf` stays light (and never touches tf-keras / tfmot).
    if name in _PRUNING:
        from cocopie_tf import pruning

        return getattr(pruning, name)
    if name == "convert":
        from cocopie_tf.converter import convert

        return convert
    raise AttributeError(f"module 'cocopie_tf' has no attribute {name!r}")


_PRUNING = ("ADMMPruning", "PatternPruning", "PrunableLayer", "prune_patterns",
            "pruning_report", "strip_pruning")

__version__ = "0.1.0"

__all__ = ["lite", "patterns", "tune", "convert", "__version__", *_PRUNING]
