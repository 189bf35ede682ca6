"""Keras -> .tflite with the pattern metadata inside.

The converted file stays a stock TFLite model (stock ops, dense float32
filters with exact zeros) that runs anywhere; the ``cocopie`` metadata entry
tells the delegate, per pruned convolution (3x3, 1x1, depthwise), the pattern
library and a CRC32 that ties the record to the filter bytes; each kernel's
pattern (or its removal) follows from the weights (format v2, docs/metadata.md).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pathlib
import re
import shutil
import tempfile
import threading

import numpy as np

from cocopie_tf._files import check_destination, pid_alive, write_file
from cocopie_tf.converter import metadata as M

_CONV_2D = 3
_DEPTHWISE_CONV_2D = 4
_PRUNABLE = {_CONV_2D: M.OP_CONV_2D, _DEPTHWISE_CONV_2D: M.OP_DEPTHWISE_CONV_2D}
_FLOAT32 = 0  # schema TensorType.FLOAT32


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _buffer_bytes(model_t, buffer_index: int, raw: bytes) -> bytes | None:
    buf = model_t.buffers[buffer_index]
    if buf.data is not None and len(buf.data):
        return np.asarray(buf.data, np.uint8).tobytes()
    offset, size = getattr(buf, "offset", 0) or 0, getattr(buf, "size", 0) or 0
    if offset > 1 and size and offset + size <= len(raw):  # large models keep data outside
        return raw[offset:offset + size]
    return None


def _opcode(model_t, index: int) -> int:
    code = model_t.operatorCodes[index]
    return max(int(code.builtinCode), int(code.deprecatedBuiltinCode))


def filter_array(tflite_bytes: bytes, subgraph: int, tensor_index: int) -> np.ndarray:
    """A constant float32 tensor of the model as an array of its shape."""
    model_t = _schema().ModelT.InitFromPackedBuf(bytearray(tflite_bytes), 0)
    tensor = model_t.subgraphs[subgraph].tensors[tensor_index]
    data = _buffer_bytes(model_t, tensor.buffer, tflite_bytes)
    if data is None:
        raise ValueError(f"tensor {tensor_index} has no constant data")
    return np.frombuffer(data, "<f4").reshape([int(d) for d in tensor.shape])


def pattern_records(tflite_bytes: bytes,
                    max_patterns: int | None = None) -> tuple[list[dict], list[str]]:
    """Finds the pattern-pruned CONV_2D and DEPTHWISE_CONV_2D filters of a
    .tflite model (1x1 convs included: connectivity pruning is their pattern).

    Returns (records for the metadata, notes on convolutions left out and why);
    :func:`pattern_scan` gives the same with the reasons per operator."""
    records, skipped = pattern_scan(tflite_bytes, max_patterns)
    return records, [f"{M.OP_KINDS[k['op_kind']]} op {k['op_index']} (filter tensor "
                     f"{k['filter_tensor']}): {k['reason']}" for k in skipped]


def pattern_scan(tflite_bytes: bytes,
                 max_patterns: int | None = None) -> tuple[list[dict], list[dict]]:
    """(records, skipped): the metadata records of the pattern-pruned
    convolutions, and per other convolution a dict with subgraph, op_index,
    op_kind, filter_tensor and the reason it is not pattern-pruned.
    A filter counts as pattern-pruned within the delegate's limits
    (``_cc.pattern_limits()``, the one definition): at most ``max_density`` of
    its weights non-zero and at most ``max_patterns`` (or the smaller given
    ``max_patterns``) distinct kernel masks of at most ``max_taps`` positions.
    Records leave the kernel codes and filter order to the reader (format v2):
    both follow from the weights, so a record costs a few dozen bytes.
    """
    from cocopie_tf import _cc

    limits = _cc.pattern_limits()
    cap = limits["max_patterns"] if max_patterns is None else min(max_patterns,
                                                                   limits["max_patterns"])

    schema = _schema()
    model_t = schema.ModelT.InitFromPackedBuf(bytearray(tflite_bytes), 0)
    records, skipped = [], []
    for sg_index, sg in enumerate(model_t.subgraphs):
        for op_index, op in enumerate(sg.operators):
            opcode = _opcode(model_t, op.opcodeIndex)
            if opcode not in _PRUNABLE:
                continue
            op_kind = _PRUNABLE[opcode]
            tensor_index = int(op.inputs[1])
            tensor = sg.tensors[tensor_index]
            data = _buffer_bytes(model_t, tensor.buffer, tflite_bytes)

            def skip(reason):
                skipped.append(dict(subgraph=sg_index, op_index=op_index, op_kind=op_kind,
                                    filter_tensor=tensor_index, reason=reason))

            shape = tuple(int(d) for d in tensor.shape)
            if tensor.type != _FLOAT32 or data is None or len(shape) != 4:
                skip("filter is not a constant 4-D float32 tensor")
                continue
            filt = np.frombuffer(data, "<f4").reshape(shape)
            if op_kind == M.OP_DEPTHWISE_CONV_2D:
                _, k_h, k_w, out_c = shape  # [1, k_h, k_w, channels]: one kernel per channel
                in_c = 1
            else:
                out_c, k_h, k_w, in_c = shape  # OHWI
            if k_h * k_w > limits["max_taps"]:
                skip(f"kernel larger than {limits['max_taps']} positions")
                continue
            density = float(np.count_nonzero(filt)) / filt.size
            masks = M.kernel_masks(filt, op_kind)
            kept = masks[masks != 0]
            values, counts = np.unique(kept, return_counts=True)
            if density > limits["max_density"] or len(values) > min(cap, M.MAX_PATTERNS) or \
                    not len(values):
                skip(f"not pattern-pruned ({density:.0%} non-zero, "
                     f"{len(values)} distinct kernel masks)")
                continue
            library = [int(m) for m in values[np.argsort(-counts, kind="stable")]]
            records.append(dict(subgraph=sg_index, op_index=op_index, filter_tensor=tensor_index,
                                op_kind=op_kind, out_c=out_c, in_c=in_c, k_h=k_h, k_w=k_w,
                                group=int(max(1, _group_size(masks))),
                                filter_crc32=M.filter_crc(data), patterns=library,
                                codes=M.codes_from_weights(masks, library),
                                codes_from_weights=True, reorder=None, tuning=b""))
    return records, skipped


def _with_derived_codes(meta: dict, raw: bytes) -> dict:
    for r in meta["records"]:
        if r["codes"] is not None:
            continue
        try:
            filt = filter_array(raw, r["subgraph"], r["filter_tensor"])
        except (ValueError, IndexError, TypeError):
            continue  # no such constant filter: the record matches nothing
        want = (1, r["k_h"], r["k_w"], r["out_c"]) if r["op_kind"] == M.OP_DEPTHWISE_CONV_2D \
            else (r["out_c"], r["k_h"], r["k_w"], r["in_c"])
        if filt.shape == want:
            r["codes"] = M.codes_from_weights(M.kernel_masks(filt, r["op_kind"]), r["patterns"])
    return meta


def operators(tflite_bytes: bytes) -> list[tuple[int, int, str]]:
    """(subgraph, op index, builtin op name) of every operator of the model."""
    schema = _schema()
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model_t = schema.ModelT.InitFromPackedBuf(bytearray(tflite_bytes), 0)
    return [(sg_index, op_index, names.get(_opcode(model_t, op.opcodeIndex), "CUSTOM"))
            for sg_index, sg in enumerate(model_t.subgraphs)
            for op_index, op in enumerate(sg.operators)]


def _group_size(masks: np.ndarray) -> int:
    """Largest G in (4, 2, 1) such that runs of G filters share their masks."""
    out_c = masks.shape[0]
    for g in (4, 2):
        if out_c % g == 0:
            m = masks.reshape(out_c // g, g, -1)
            if np.all(m == m[:, :1]):
                return g
    return 1


def add_metadata(tflite_bytes: bytes, payload: bytes, name: str = M.NAME) -> bytes:
    """Returns the model with ``payload`` stored as metadata ``name`` (replacing
    an existing entry of that name)."""
    import flatbuffers

    schema = _schema()
    model_t = schema.ModelT.InitFromPackedBuf(bytearray(tflite_bytes), 0)
    buffer_t = schema.BufferT()
    buffer_t.data = np.frombuffer(payload, np.uint8)
    model_t.buffers.append(buffer_t)
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(model_t.buffers) - 1
    kept = [m for m in (model_t.metadata or []) if (m.name.decode() if isinstance(m.name, bytes) else m.name) != name]
    model_t.metadata = kept + [entry]
    builder = flatbuffers.Builder(len(tflite_bytes) + len(payload) + 1024)
    builder.Finish(model_t.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def read_metadata(path_or_bytes) -> dict | None:
    """The decoded ``cocopie`` metadata of a .tflite file or bytes; None if the
    model has none. Raises ValueError if the model or the record is malformed.

    Records that leave the kernel codes to the weights (format v2,
    ``codes_from_weights``) get them derived here, as the delegate derives
    them; ``codes`` stays None where the filter's masks do not fit the
    record's patterns (a record the delegate would reject)."""
    raw = (pathlib.Path(path_or_bytes).read_bytes()
           if isinstance(path_or_bytes, (str, os.PathLike)) else bytes(path_or_bytes))
    from cocopie_tf.lite._model_check import verify_model_bytes

    verify_model_bytes(raw)
    schema = _schema()
    try:
        model = schema.Model.GetRootAs(raw, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() in (M.NAME.encode(), M.NAME):
                b = entry.Buffer()
                if b >= model.BuffersLength():
                    raise M.MetadataError(f"metadata buffer index {b} out of range")
                buf = model.Buffers(b)
                if buf.DataLength():
                    payload = buf.DataAsNumpy().tobytes()
                else:
                    off, size = buf.Offset(), buf.Size()
                    if not (1 < off and off + size <= len(raw)):
                        raise M.MetadataError("metadata buffer points outside the file")
                    payload = raw[off:off + size]
                return _with_derived_codes(M.decode(payload), raw)
    except M.MetadataError:
        raise
    except Exception as e:  # the flatbuffer accessors raise many kinds on garbage
        raise ValueError(f"malformed TFLite model: {type(e).__name__}: {e}") from None
    return None


_ALLOWED_OPTIONS = {"optimizations", "target_spec", "experimental_new_converter",
                    "allow_custom_ops", "inference_input_type", "inference_output_type"}


def convert(model, *, output_path=None, force: bool = False, **converter_options) -> bytes:
    """Converts a (wrapped or stripped) Keras model to .tflite bytes with the
    ``cocopie`` pattern metadata; optionally writes them (atomically; an
    existing file is only replaced with ``force=True``)."""
    import tensorflow as tf

    from cocopie_tf.pruning.api import strip_pruning
    from cocopie_tf.pruning.callback import find_wrappers

    unknown = set(converter_options) - _ALLOWED_OPTIONS
    if unknown:
        raise ValueError(f"unknown converter options {sorted(unknown)}; "
                         f"known: {sorted(_ALLOWED_OPTIONS)}")
    if any(o == tf.lite.Optimize.EXPERIMENTAL_SPARSITY
           for o in converter_options.get("optimizations", []) or []):
        raise ValueError("optimizations: EXPERIMENTAL_SPARSITY turns filters into run-time "
                         "DENSIFY outputs, which no delegate can plan for; leave it out")
    if output_path is not None:  # before the slow part: a bad destination fails now
        output_path = check_destination(output_path, replace=force)
    if find_wrappers(model):
        model = strip_pruning(model)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    for key, value in converter_options.items():
        setattr(converter, key, value)
    try:
        with contextlib.redirect_stdout(io.StringIO()), _quiet_tf_logger(), _private_tempdir():
            tflite_bytes = converter.convert()
    except Exception as e:  # tf.lite's ConverterError and the many kinds below it
        raise ConverterError.from_tf(e, model) from None
    records, _ = pattern_records(tflite_bytes)
    if records:
        tflite_bytes = add_metadata(tflite_bytes, M.encode(records))
    if output_path is not None:
        write_file(output_path, tflite_bytes, replace=force)
    return tflite_bytes


class ConverterError(ValueError):
    """The TFLite converter refused the model.  ``layers`` names the Keras
    layers its message points at, ``ops`` the TensorFlow ops it has no TFLite
    kernel for; the message says both, and the converter's own first error."""

    def __init__(self, message: str, layers=(), ops=()):
        super().__init__(message)
        self.layers, self.ops = list(layers), list(ops)

    @classmethod
    def from_tf(cls, error: Exception, model) -> "ConverterError":
        text = str(error)
        ops = sorted(set(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", text)))
        names = {layer.name: layer for layer in _all_layers(model)}
        layers = []
        # MLIR locations look like fused["Op:", "functional_1/my_layer_1/Op@..."]; Keras 3
        # adds "_<n>" to the layer's name in the graph.
        for path in re.findall(r'fused\["[^"]*", "([^"@]+)', text):
            for part in path.split("/"):
                for cand in (part, re.sub(r"_\d+$", "", part)):
                    if cand in names and cand not in layers and names[cand] is not model:
                        layers.append(cand)
                        break
        first = next((ln.split("error:", 1)[1].strip() for ln in text.splitlines()
                      if "error:" in ln), text.strip().splitlines()[0] if text.strip() else "")
        first = re.sub(r"loc\(.*?\)\)+:\s*", "", first)[:300]
        what = ", ".join(f"'{n}' ({type(names[n]).__name__})" for n in layers) or "the model"
        message = f"the TFLite converter cannot convert {what}"
        if ops:
            message += (f": TFLite has no built-in kernel for {', '.join(ops)} (TF Select ops "
                        "are not supported by the cocopie delegate); replace the layer or "
                        "compute it outside the model")
        elif first:
            message += f": {first}"
        return cls(message, layers, ops)


def _all_layers(model):
    seen, stack = [], [model]
    while stack:
        layer = stack.pop()
        if any(layer is s for s in seen):
            continue
        seen.append(layer)
        stack.extend(getattr(layer, "layers", []) or [])
    return seen


_TEMPDIR_LOCK = threading.Lock()


@contextlib.contextmanager
def _quiet_tf_logger():
    """TensorFlow's Python logger at WARNING or above while converting: its
    INFO lines about the temporary SavedModel ("Assets written to ...") are
    noise for the user (in notebooks they bypass redirect_stdout).  Warnings
    and errors still show; the level is restored afterwards."""
    logger = logging.getLogger("tensorflow")
    old = logger.level
    if logger.getEffectiveLevel() < logging.WARNING:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(old)


@contextlib.contextmanager
def _private_tempdir():
    """TensorFlow's converter saves the model to a temporary SavedModel folder
    that a killed process leaves behind: give it a folder named after our PID,
    remove it afterwards, and remove those of dead PIDs on the next run.
    (tempfile.tempdir is process-wide, hence the lock.)"""
    base = pathlib.Path(tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for entry in base.glob("cocopie-convert-*-*"):
            m = re.match(r"cocopie-convert-(\d+)-", entry.name)
            if m and entry.is_dir() and not entry.is_symlink() and not pid_alive(int(m[1])):
                shutil.rmtree(entry, ignore_errors=True)
    with _TEMPDIR_LOCK:
        folder = tempfile.mkdtemp(prefix=f"cocopie-convert-{os.getpid()}-", dir=base)
        old, tempfile.tempdir = tempfile.tempdir, folder
        try:
            yield folder
        finally:
            tempfile.tempdir = old
            shutil.rmtree(folder, ignore_errors=True)
