"""Running models with the cocopie TFLite delegate in the LiteRT interpreter."""

from cocopie_tf.lite._delegate import Interpreter, delegate_path, delegate_report, load_delegate


def read_metadata(path_or_bytes):
    """The decoded cocopie metadata of a .tflite file or bytes (None if absent)."""
    from cocopie_tf.converter import read_metadata as _read

    return _read(path_or_bytes)


__all__ = ["Interpreter", "delegate_path", "delegate_report", "load_delegate", "read_metadata"]
