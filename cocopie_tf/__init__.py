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
themselves.  The pruning wrapper is still registered with Keras, so
``keras.models.load_model`` reads wrapped models after ``import cocopie_tf``:
at once if Keras is already imported, else right after Keras's own import
(a one-shot import hook; it costs nothing until then).  ``pruning_scope()``
does the same for a ``with`` block.
"""

import importlib.abc
import importlib.util
import sys

from cocopie_tf import lite, patterns, tune


def _register_with_keras() -> None:
    import cocopie_tf.pruning.wrapper  # noqa: F401 - registers "cocopie_tf>PatternPruning"


class _RegisterAfterKerasImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when ``keras`` is first imported, wraps its
    loader so the wrapper layer is registered as soon as Keras has loaded."""

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]  # one shot
        spec = importlib.util.find_spec("keras")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            try:
                _register_with_keras()
            except Exception as e:  # noqa: BLE001 - never break the user's `import keras`
                import warnings

                warnings.warn(f"cocopie_tf could not register its Keras layers: {e}",
                              stacklevel=2)

        spec.loader.exec_module = exec_module
        return spec


if "keras" in sys.modules:
    _register_with_keras()
elif not any(isinstance(f, _RegisterAfterKerasImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterKerasImport())


def pruning_scope():
    """A ``with`` scope in which Keras deserialises cocopie_tf's layers, for
    code that loads models in ways that bypass the global registration:

        with cocopie_tf.pruning_scope():
            model = keras.models.load_model("wrapped.keras")
    """
    import keras

    from cocopie_tf.pruning.wrapper import PatternPruning

    return keras.saving.CustomObjectScope({"PatternPruning": PatternPruning,
                                           "cocopie_tf>PatternPruning": PatternPruning})


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


_PRUNING = ("ADMMPruning", "PatternPruning", "PrunableLayer", "prune_oneshot", "prune_patterns",
            "pruning_report", "strip_pruning")

__version__ = "0.1.0"

__all__ = ["lite", "patterns", "tune", "convert", "pruning_scope", "__version__", *_PRUNING]
