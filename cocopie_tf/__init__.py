"""cocopie_tf: CoCoPIE-style compression-compilation co-design for TensorFlow.

Pattern and connectivity pruning for Keras 3 models, and a TFLite delegate
that runs the pruned convolutions with pattern-aware kernels on CPU.

Public API (kept small on purpose):

* ``cocopie_tf.lite``: ``delegate_path``, ``load_delegate``, ``Interpreter``.
* ``cocopie_tf.patterns``: pattern candidates, library selection, projection,
  connectivity, one-shot ``prune_kernel``.

Importing the package imports neither TensorFlow nor
tensorflow-model-optimization; submodules that need TensorFlow import it
themselves.
"""

from cocopie_tf import lite, patterns

__version__ = "0.1.0"

__all__ = ["lite", "patterns", "__version__"]
