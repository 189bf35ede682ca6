"""Cheap sanity checks on .tflite bytes, so bad files fail with a clear error."""

from __future__ import annotations

_IDENTIFIER = b"TFL3"


def verify_model_bytes(content) -> None:
    """Raises ValueError unless ``content`` looks like a TFLite flatbuffer."""
    if not isinstance(content, (bytes, bytearray, memoryview)):
        raise TypeError(f"model_content must be bytes, got {type(content).__name__}")
    data = bytes(content)
    if len(data) < 8:
        raise ValueError(f"not a TFLite model: only {len(data)} bytes")
    if data[4:8] != _IDENTIFIER:
        raise ValueError(
            f"not a TFLite model: file identifier is {data[4:8]!r}, expected {_IDENTIFIER!r}"
        )
    root = int.from_bytes(data[0:4], "little")
    if root < 8 or root + 4 > len(data):
        raise ValueError(
            f"truncated or corrupt TFLite model: root table offset {root} is outside "
            f"the {len(data)}-byte buffer"
        )
