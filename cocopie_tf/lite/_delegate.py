"""Locating, loading and applying the cocopie delegate.

The delegate is a TFLite *external delegate*: a shared library exporting
``tflite_plugin_create_delegate``.  It is loaded into the stock LiteRT
interpreter (``ai_edge_litert``) or ``tf.lite.Interpreter``; nodes it does not
claim keep running on TFLite's own kernels (XNNPACK by default).
"""

from __future__ import annotations

import ctypes
import importlib.resources
import json
import os
import pathlib
import sys
from typing import Any

import numpy as np

from ai_edge_litert import interpreter as _litert

_LIB_NAME = {"darwin": "libcocopie_delegate.dylib", "win32": "cocopie_delegate.dll"}.get(
    sys.platform, "libcocopie_delegate.so"
)
_BACKENDS = ("cpu", "gpu")


def delegate_path() -> pathlib.Path:
    """Returns the path of the delegate's shared library.

    It is installed inside the package (also for editable installs, where the
    compiled files live next to the ``cocopie_tf._cc`` extension).
    """
    candidates = []
    try:
        candidates.append(pathlib.Path(str(importlib.resources.files("cocopie_tf") / _LIB_NAME)))
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - odd loaders
        pass
    import cocopie_tf

    candidates += [pathlib.Path(p) / _LIB_NAME for p in getattr(cocopie_tf, "__path__", [])]
    try:
        from cocopie_tf import _cc

        candidates.append(pathlib.Path(_cc.__file__).with_name(_LIB_NAME))
    except ImportError:
        pass
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"the cocopie delegate library {_LIB_NAME} is not installed; looked in: "
        + ", ".join(dict.fromkeys(str(p.parent) for p in candidates))
        + ". Reinstall the package with `pip install .` from a source checkout."
    )


def _delegate_options(backend: str, num_threads: int | None, options: dict[str, Any]) -> dict:
    if backend not in _BACKENDS:
        raise ValueError(f"backend: expected one of {_BACKENDS}, got {backend!r}")
    opts: dict[str, str] = {"backend": backend}
    if num_threads is not None:
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads: expected a positive integer, got {num_threads!r}")
        opts["num_threads"] = str(num_threads)
    for key, value in options.items():
        if value is None:  # the option's default, as for num_threads (not the string "None")
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        value = str(value)
        # C strings end at NUL: 'zz\0/etc/passwd' would silently become 'zz'.
        if "\0" in key or "\0" in value:
            raise ValueError(f"option {key!r}: value contains a NUL character")
        opts[key] = value
    return opts


def load_delegate(*, backend: str = "cpu", num_threads: int | None = None, **options):
    """Loads the cocopie delegate into LiteRT and returns the delegate object.

    Args:
      backend: ``"cpu"``, or ``"gpu"``: OpenCL, loaded at run time
        (``libOpenCL.so.1``); every conv, depthwise conv and fully connected
        node runs on the device, tensors stay there inside a partition.
        Options ``gpu_device`` (``auto`` or a device number),
        ``gpu_fallback`` (``none``: a ValueError when OpenCL or the device
        is missing; ``cpu``: run on the CPU backend, the report says why),
        ``gpu_cache`` (compiled-program directory, ``off``: none) and
        ``gpu_work_group``.  See docs/gpu.md.
      num_threads: threads for the delegate's kernels; default: the
        interpreter's ``num_threads``.
      **options: further delegate options (``verbose``, ``kernel``); unknown
        names are refused with a ValueError that names them, and an option
        given as ``None`` takes its default.

    Pass the result to ``ai_edge_litert.interpreter.Interpreter(...,
    experimental_delegates=[delegate])``, or use :class:`Interpreter`.
    """
    opts = _delegate_options(backend, num_threads, options)
    try:
        return _litert.load_delegate(str(delegate_path()), opts)
    except ValueError as e:
        # LiteRT prefixes the delegate's own message with "Failed to load
        # delegate from <path>"; for the delegate's errors (bad options, no
        # OpenCL) that line only hides the message, so raise the message.
        head, _, message = str(e).partition("\n")
        if message.startswith("cocopie delegate:"):
            raise ValueError(message) from None
        raise


def delegate_report(delegate, interpreter=None) -> list[dict]:
    """The claim report of a cocopie delegate loaded with :func:`load_delegate`
    (or LiteRT's own ``load_delegate(delegate_path(), ...)``) and applied to
    an interpreter: one entry per claimed node (call after
    ``allocate_tensors()``; see :meth:`Interpreter.delegate_report` for the
    fields).  With ``interpreter``, each entry also gets ``op_name`` and
    ``output_name``, the TFLite op and output tensor name of the node (the
    Keras layer's name is part of it).  Raises ValueError for a delegate that
    is not a live cocopie delegate."""
    entries = _report(delegate)
    if interpreter is not None:
        names = {d["index"]: d["name"] for d in interpreter.get_tensor_details()}
        for e in entries:
            try:
                op = interpreter._get_op_details(e["node_index"])  # pylint: disable=protected-access
            except Exception:  # noqa: BLE001 - an index the runtime does not know
                continue
            e["op_name"] = op.get("op_name", "")
            outs = [int(t) for t in op.get("outputs", []) if int(t) >= 0]
            e["output_name"] = names.get(outs[0], "") if outs else ""
    return entries


def _report(delegate) -> list[dict]:
    get_ptr = getattr(delegate, "_get_native_delegate_pointer", None)
    if get_ptr is None:
        raise TypeError(f"expected a LiteRT delegate from load_delegate, got "
                        f"{type(delegate).__name__}")
    lib = ctypes.CDLL(str(delegate_path()))
    fn = lib.CocopieDelegateReport
    fn.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    fn.restype = ctypes.c_size_t
    ptr = get_ptr()
    # The report may grow between two calls (profile=true and an invoke on
    # another thread): the call returns the length it needed, snprintf-style,
    # so retry until the text fitted.
    size = fn(ptr, None, 0)
    if size == 0:
        raise ValueError("not a cocopie delegate (or one already deleted): delegate_report "
                         "needs the object cocopie_tf.lite.load_delegate returned")
    while True:
        buf = ctypes.create_string_buffer(size + 1025)
        need = fn(ptr, buf, len(buf))
        if need < len(buf):
            return json.loads(buf.value.decode("utf-8"))
        size = need


class Interpreter(_litert.Interpreter):
    """A LiteRT interpreter with the cocopie delegate applied.

    Nodes the delegate claims (float32 CONV_2D / DEPTHWISE_CONV_2D /
    FULLY_CONNECTED with constant weights, same-shape ADD, MAX_POOL_2D and
    AVERAGE_POOL_2D, and MEAN over height and width on the CPU backend) run
    on cocopie kernels; the rest of
    the graph runs on TFLite's kernels.  Everything else is the stock
    ``ai_edge_litert.interpreter.Interpreter`` API.
    """

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        model_content: bytes | None = None,
        *,
        backend: str = "cpu",
        num_threads: int | None = None,
        **options,
    ):
        if model_path is not None and model_content is not None:
            raise ValueError("pass either model_path or model_content, not both")
        if model_path is None and model_content is None:
            raise ValueError("pass model_path or model_content")
        # Options first: a typo should be reported even if the model is bad too.
        self._cocopie_delegate = load_delegate(
            backend=backend, num_threads=num_threads, **options
        )
        if model_path is not None:
            path = pathlib.Path(model_path)
            if not path.is_file():
                raise FileNotFoundError(f"model file not found: {path}")
            model_content = path.read_bytes()
        _check_flatbuffer(model_content)
        super().__init__(
            model_content=model_content,
            experimental_delegates=[self._cocopie_delegate],
            num_threads=num_threads,
        )

    def allocate_tensors(self):
        try:
            return super().allocate_tensors()
        except RuntimeError as e:
            if str(e).strip():
                raise
            # LiteRT's arena fails without a message when the tensors do not
            # fit in memory (a damaged shape): say so, with the size.
            raise RuntimeError(f"LiteRT could not allocate the model's tensors and gave no "
                               f"reason; {self._tensor_gib()}") from None
        except MemoryError as e:
            # LiteRT's allocator throws std::bad_alloc for a tensor larger than
            # memory (or than the process may map): name the cause.
            raise MemoryError(f"LiteRT ran out of memory allocating the model's tensors "
                              f"({e}); {self._tensor_gib()}") from None

    def _tensor_gib(self) -> str:
        total = 0
        for d in self.get_tensor_details():
            n = 1
            for dim in d["shape"]:
                n *= max(int(dim), 0)
            total += n * np.dtype(d["dtype"]).itemsize
        return f"their sizes add up to {total / 2**30:,.1f} GiB"

    def delegate_report(self) -> list[dict]:
        """One entry per node the delegate claimed (call after allocate_tensors).

        Each entry: ``node_index``, ``op``, ``kernel``, ``dense_macs`` and
        ``executed_macs`` (the multiply-accumulates the kernel performs),
        ``device`` (``"cpu"`` or ``"gpu"``); on the CPU also ``layout``,
        ``buffer_slot``, ``buffer_bytes``, ``streamed_output`` (the node's
        NHWC output leaves the partition through streaming stores) and
        ``prefetch`` (the kernel asks for the lines of a tensor past 1 MiB
        ahead of use: a depthwise conv the next channel's planes, generated
        code its output lines), and for
        pattern convs the engine and its generated code's figures; with
        backend="gpu" also ``gpu_device``, ``program_cache`` (``hit``,
        ``stored``, ``rebuilt (why)``, ``off``), ``build_ms`` and
        ``code_bytes`` (OpenCL source).
        """
        return delegate_report(self._cocopie_delegate, self)


def _check_flatbuffer(content: bytes) -> None:
    """Rejects content that is not a complete TFLite flatbuffer, before the
    runtime sees it (the runtime's own checks are not hardened against every
    truncation)."""
    from cocopie_tf.lite._model_check import check_operators, verify_model_bytes

    verify_model_bytes(content)
    check_operators(content)
