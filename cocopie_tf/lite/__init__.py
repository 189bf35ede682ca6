"""Running models with the cocopie TFLite delegate in the LiteRT interpreter."""

from cocopie_tf.lite._delegate import Interpreter, delegate_path, load_delegate

__all__ = ["Interpreter", "delegate_path", "load_delegate"]
