"""Keras -> .tflite conversion with the cocopie pattern metadata."""

from cocopie_tf.converter.core import (ConverterError, add_metadata, convert, pattern_records,
                                      read_metadata)
from cocopie_tf.converter.metadata import MetadataError

__all__ = ["convert", "read_metadata", "add_metadata", "pattern_records", "MetadataError",
           "ConverterError"]
