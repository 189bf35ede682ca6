"""Seeded mutation fuzzer: damaged .tflite files through the cocopie delegate,
compared with stock LiteRT, each case in its own child process.

    python tests/fuzz_delegate.py --cases 100000 --workers 2 --out fuzz-out

A corpus of small pattern-pruned models (made once, in a subprocess, with
Keras) is mutated: bit flips, byte and word overwrites, truncation, chunk
insertion/removal, float pokes into the weights, and mutations of the
``cocopie`` metadata entry (with and without a repaired checksum).  Every
case forks a child from a parent that has loaded LiteRT and the delegate but
never created an interpreter; the child runs stock LiteRT first, then the
delegate (claim mode and thread count alternate), and sends both results
back.  The parent counts, per case (and keeps the files of failures and of
the two outcomes where only one side runs):

- ``crash``: the child died while the delegate's interpreter ran (a stock
  crash is counted apart, ``stock_crash``: the delegate was not involved;
  so is a death of ours on a file stock refused once and, run alone again,
  dies on: the crash is in stock's code);
- ``hang``: the delegate's stage ran past ``--timeout`` seconds;
- ``wrong``: both ran and the outputs differ (shape, non-finite positions, or
  more than 1e-4 relative error on the finite values);
- ``order_sensitive``: outputs differ, but stock's own two kernel paths
  (XNNPACK and the reference kernels) also disagree about which outputs are
  non-finite and the outputs or the weights reach 1e36: weights near FLT_MAX
  make the float32 summation order (and FMA or not) decide, so the file has
  no single right answer;
- ``matches_reference_kernels``: outputs differ from stock's default
  (XNNPACK) path but equal stock's reference kernels (BUILTIN_REF), whose
  semantics the delegate follows where XNNPACK's depend on data layout: a
  NaN in a max-pool window is skipped (XNNPACK gives NaN, -inf or a partial
  maximum depending on where the NaN sits; cc/kernels/pool.h);
- ``non_finite_weights``: outputs differ, stock's two kernel paths
  disagree about which outputs are non-finite, and a float constant of the
  file is Inf or NaN: the delegate follows XNNPACK in its convs (Inf, not
  FLT_MAX) and the reference kernels in its pools (NaN skipped), so no
  single stock answer exists to match;
- ``stock_nondeterministic``: outputs differ, and a second stock run of the
  same file differs from the first (the file makes stock read memory it
  never wrote), so there is nothing to match;
- ``refused`` / ``refused_stock_ran``: the delegate's interpreter raised a
  Python error with a message (the promised behaviour for files it cannot
  run), and stock refused the file too / ran it.

Exit status 0 only when crash, hang and wrong are all 0.  Damaged cases are
written to ``--out`` with a JSON summary; ``--replay N`` reruns case N in
this process (no fork) to debug it.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

CORPUS_SCRIPT = r"""
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np, keras
import cocopie_tf
from cocopie_tf.patterns import prune_kernel

def pruned(model, names, conn=2.0, group=1, keep_1x1=0.5, seed_1x1=1):
    for n in names:
        layer = model.get_layer(n)
        w = layer.get_weights()
        if isinstance(layer, keras.layers.DepthwiseConv2D):  # patterns only, per channel
            k = w[0]
            w[0] = prune_kernel(k.reshape(*k.shape[:2], 1, -1), connectivity=None).reshape(k.shape)
        elif w[0].shape[:2] == (1, 1):  # 1x1: connectivity only, keep_1x1 of the kernels
            w[0] = w[0] * (np.random.default_rng(seed_1x1).random(w[0].shape) < keep_1x1)
        else:
            w[0] = prune_kernel(w[0], connectivity=conn, group=group)
        layer.set_weights(w)
    return cocopie_tf.convert(model)

out = sys.argv[1]
keras.utils.set_random_seed(0)
models = {}
inp = keras.Input((10, 10, 16), batch_size=1)
h = keras.layers.Conv2D(24, 3, padding="same", activation="relu", name="a")(inp)
h = keras.layers.Conv2D(24, 3, padding="same", activation="relu6", name="b")(h)
h = keras.layers.Conv2D(8, 3, padding="valid", name="c")(h)
models["chain"] = pruned(keras.Model(inp, h), "abc")
inp = keras.Input((12, 12, 8), batch_size=1)
h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="a")(inp)
h = keras.layers.Conv2D(16, 3, strides=2, padding="same", name="s")(h)
h = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu6")(h)
h = keras.layers.Conv2D(16, 3, dilation_rate=2, padding="same", name="d")(h)
h = keras.layers.Flatten()(h)
h = keras.layers.Dense(10)(h)
models["mixed"] = pruned(keras.Model(inp, h), "ad", conn=3.6, group=4)
inp = keras.Input((8, 8, 32), batch_size=1)
a = keras.layers.Conv2D(32, 1, name="p")(inp)
b = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="q")(a)
h = keras.layers.Add()([a, b])
h = keras.layers.MaxPooling2D()(h)
models["residual"] = pruned(keras.Model(inp, h), "pq")
# MobileNetV2-like blocks: pruned 1x1 convs around pattern-pruned depthwise
# convs (in-place 1x1 code, planar depthwise kernels, the stride-2 one too).
inp = keras.Input((14, 14, 16), batch_size=1)
h = keras.layers.Conv2D(48, 1, activation="relu6", name="e")(inp)
h = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu6", name="dw")(h)
h = keras.layers.Conv2D(16, 1, name="p")(h)
h = keras.layers.Add()([inp, h])
h = keras.layers.Conv2D(48, 1, activation="relu6", name="e2")(h)
h = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", activation="relu6", name="dw2")(h)
h = keras.layers.Conv2D(24, 1, name="p2")(h)
# (1x1 convs at 3.6x connectivity, as MobileNetV2's.)
models["mbblock"] = pruned(keras.Model(inp, h), ["dw", "dw2", "e", "p", "e2", "p2"],
                           keep_1x1=10 / 36, seed_1x1=2)
# VGG-16's last stages in miniature: 4x4 and 2x2 maps (the small-map kernels,
# 4-tap quads on 2x2) between max pools, then a dense classifier.
inp = keras.Input((8, 8, 16), batch_size=1)
h = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="v8")(inp)
h = keras.layers.MaxPooling2D()(h)
h = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="v4")(h)
h = keras.layers.MaxPooling2D()(h)
h = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="v2")(h)
h = keras.layers.Flatten()(h)
h = keras.layers.Dense(10)(h)
models["smallmaps"] = pruned(keras.Model(inp, h), ["v8", "v4", "v2"], conn=3.6)
# A network's head: a dense stride-2 conv over 3 channels (generated code
# for short dense filters, phase-split, its input moved by the narrow
# transpose), then a pattern-pruned depthwise conv, a pruned 1x1 conv and
# global average pooling.
inp = keras.Input((17, 16, 3), batch_size=1)
h = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu6", name="st")(inp)
h = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu6", name="sdw")(h)
h = keras.layers.Conv2D(24, 1, name="sp")(h)
h = keras.layers.GlobalAveragePooling2D()(h)  # MEAN over the planes
models["stem"] = pruned(keras.Model(inp, h), ["sdw", "sp"], keep_1x1=10 / 36, seed_1x1=3)
# ResNet-50's last stage in miniature: bottlenecks on a 7x7 map (4 register
# tiles), 1x1 convs at 3.6x, so where 512-bit FMAs run at half rate (AMD
# Zen 4) claim=auto runs them in place between claimed neighbours.
inp = keras.Input((7, 7, 32), batch_size=1)
h = inp
for k in range(2):
    y = keras.layers.Conv2D(16, 1, activation="relu", name=f"r{k}a")(h)
    y = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name=f"r{k}b")(y)
    y = keras.layers.Conv2D(32, 1, name=f"r{k}c")(y)
    h = keras.layers.Activation("relu")(keras.layers.Add()([h, y]))
h = keras.layers.GlobalAveragePooling2D()(h)
models["stage5"] = pruned(keras.Model(inp, h), ["r0a", "r0b", "r0c", "r1a", "r1b", "r1c"],
                          conn=3.6, keep_1x1=10 / 36, seed_1x1=4)
# ResNet's stem pool (ZeroPadding2D then a VALID max pool: the PAD folded
# into the pool) and a MobileNetV2 block whose ADD takes the shortcut as its
# second operand (the conv before the block keeps writing its output; the
# ADD is fused into the project conv's generated code).
inp = keras.Input((12, 10, 8), batch_size=1)
h = keras.layers.Conv2D(16, 1, activation="relu", name="h")(inp)
h = keras.layers.ZeroPadding2D(1)(h)
h = keras.layers.MaxPooling2D(3, strides=2)(h)
t = keras.layers.Conv2D(48, 1, activation="relu6", name="e")(h)
t = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu6", name="dw")(t)
t = keras.layers.Conv2D(16, 1, name="p")(t)
h = keras.layers.ReLU(6.0)(keras.layers.Add()([t, h]))
h = keras.layers.Conv2D(16, 1, name="t")(h)
models["shortcut2"] = pruned(keras.Model(inp, h), ["h", "e", "dw", "p", "t"],
                             keep_1x1=10 / 36, seed_1x1=5)
for name, data in models.items():
    with open(os.path.join(out, name + ".tflite"), "wb") as f:
        f.write(data)
"""

SPECIAL_FLOATS = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30, 1e-40, 3.4e38]
SPECIAL_WORDS = [0, 1, 2, 3, 4, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
                 0xFFFFFFFE, 1 << 20, 1 << 24]


def make_corpus(folder: pathlib.Path) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    if not list(folder.glob("*.tflite")):
        subprocess.run([sys.executable, "-c", CORPUS_SCRIPT, str(folder)], check=True,
                       cwd=folder, timeout=900)
    return {p.stem: p.read_bytes() for p in sorted(folder.glob("*.tflite"))}


def _metadata_span(data: bytes):
    i = data.find(b"CCPM")
    if i < 4:
        return None
    (length,) = struct.unpack_from("<I", data, i - 4)
    return (i, length) if i + length <= len(data) else None


def mutate(base: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One damaged copy of `base` and the name of the mutation."""
    data = bytearray(base)
    n = len(data)
    span = _metadata_span(base)
    kind = int(rng.integers(8))
    if kind == 0:
        for _ in range(1 + int(rng.integers(8))):
            data[int(rng.integers(n))] ^= 1 << int(rng.integers(8))
        return "bitflip", bytes(data)
    if kind == 1:
        for _ in range(1 + int(rng.integers(8))):
            data[int(rng.integers(n))] = int(rng.choice([0, 0xFF, 0x7F, 0x80, rng.integers(256)]))
        return "bytes", bytes(data)
    if kind == 2:
        pos = int(rng.integers(n // 4)) * 4
        struct.pack_into("<I", data, pos, int(rng.choice(SPECIAL_WORDS)))
        return "word", bytes(data)
    if kind == 3:
        return "truncate", bytes(data[: int(rng.integers(n))])
    if kind == 4:
        pos, size = int(rng.integers(n)), int(rng.integers(1, 64))
        if rng.integers(2):
            return "insert", bytes(data[:pos] + rng.bytes(size) + data[pos:])
        return "delete", bytes(data[:pos] + data[pos + size:])
    if kind == 5:  # a float in the weights: the big buffers sit in the file's body
        pos = int(rng.integers(n // 4)) * 4
        struct.pack_into("<f", data, pos, float(rng.choice(SPECIAL_FLOATS)))
        return "float", bytes(data)
    if span is None:
        return "bitflip", bytes(data)
    start, length = span
    if kind == 6:  # metadata bytes, the checksum repaired so the deep checks run
        for _ in range(1 + int(rng.integers(8))):
            data[start + 16 + int(rng.integers(max(1, length - 16)))] = int(rng.integers(256))
        body = bytes(data[start + 16:start + length])
        struct.pack_into("<I", data, start + 12, zlib.crc32(body) & 0xFFFFFFFF)
        return "metadata_crc", bytes(data)
    field = int(rng.integers(max(1, length // 4))) * 4
    struct.pack_into("<I", data, start + field, int(rng.choice(SPECIAL_WORDS)))
    if rng.integers(2):
        body = bytes(data[start + 16:start + length])
        struct.pack_into("<I", data, start + 12, zlib.crc32(body) & 0xFFFFFFFF)
    return "metadata_word", bytes(data)


def _run(interp, seed: int):
    """Allocates, feeds seeded inputs, invokes; returns the outputs."""
    interp.allocate_tensors()
    rng = np.random.default_rng(seed)
    for d in interp.get_input_details():
        shape = [int(s) for s in d["shape"]]
        if np.prod(shape, dtype=np.int64) > 4_000_000:
            raise ValueError(f"input of {shape} elements: not fuzzed")
        if d["dtype"] == np.float32:
            x = rng.standard_normal(shape).astype(np.float32)
        else:
            x = rng.integers(-3, 4, shape).astype(d["dtype"])
        interp.set_tensor(d["index"], x)
    interp.invoke()
    return [interp.get_tensor(d["index"]).copy() for d in interp.get_output_details()]


def _check_after_resize(it, data: bytes, case: int) -> str:
    """Every 4-D input one row and two columns larger, on the interpreter that
    already ran (the delegate prepares its partitions again) and on a fresh
    stock one: "" when they agree or stock cannot take the new shape, else
    why not.  (The first fusion of a PAD into its pool used to rewire the
    pool for good: after a resize it read the unpadded input.)"""
    from ai_edge_litert.interpreter import Interpreter

    def resized(interp):
        for d in interp.get_input_details():
            shape = [int(v) for v in d["shape"]]
            if len(shape) == 4:
                interp.resize_tensor_input(d["index"], [shape[0], shape[1] + 1, shape[2] + 2,
                                                        shape[3]])
        return _run(interp, case + 1)

    try:
        ref = resized(Interpreter(model_content=data, num_threads=1))
    except Exception:  # noqa: BLE001 - stock cannot take the new shape: nothing to check
        return ""
    try:
        out = resized(it)
    except (ValueError, RuntimeError, TypeError) as e:
        return f"after a resize: refused where stock ran: {type(e).__name__}: {e}"[:300]
    why = compare(out, ref)
    return "after a resize: " + why if why else ""


def case_options(case: int) -> dict:
    return {"claim": "all" if case % 2 == 0 else "auto", "num_threads": 1 + (case // 2) % 2}


def run_case(data: bytes, case: int, send) -> None:
    """The child's work: stock, then the delegate, then the verdict;
    send(stage, payload) after each."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from cocopie_tf import lite

    ref = None
    try:
        ref = _run(Interpreter(model_content=data, num_threads=1), case)
        send("stock", ("ok", ""))
    except Exception as e:  # noqa: BLE001 - stock refusing the file is fine
        send("stock", ("refused", f"{type(e).__name__}: {e}"[:300]))
    opts = case_options(case)
    try:
        it = lite.Interpreter(model_content=data, num_threads=opts["num_threads"],
                              claim=opts["claim"])
        out = _run(it, case)
        send("ours", ("ok", ""))
    except (ValueError, RuntimeError, TypeError, MemoryError) as e:
        # (MemoryError: LiteRT's allocator out of memory for a damaged
        # shape, named by cocopie_tf.lite's allocate_tensors.)
        send("ours", ("refused", f"{type(e).__name__}: {e}"[:300]))
        return
    if ref is None:
        return
    why = compare(out, ref)
    if not why and case % 4 == 0:
        why = _check_after_resize(it, data, case)
    if why:
        # A damaged file can make stock read memory it never wrote (an
        # operator's output aliased to a constant buffer): then stock's own
        # runs disagree with each other, and there is nothing to match.
        try:
            again = _run(Interpreter(model_content=data, num_threads=1), case)
        except Exception:  # noqa: BLE001 - stock refusing now: also not repeatable
            again = None
        if again is None or compare(again, ref):
            send("stock_nondeterministic", why)
            send("verdict", "")
            return
        # Mutated weights can be ~1e38: then the summation order alone moves
        # the result, and ReLU / max pooling downstream can turn an order-
        # dependent NaN or Inf into a finite value on one path only.  Ask
        # stock's reference kernels for a second opinion on the same file.
        try:
            alt = _run(Interpreter(model_content=data, num_threads=1,
                                   experimental_op_resolver_type=OpResolverType.BUILTIN_REF),
                       case)
        except Exception:  # noqa: BLE001 - no second opinion: keep the verdict
            alt = None
        if alt is not None and not compare(out, alt):
            # Stock's reference kernels give our answer: a path of stock's own.
            send("matches_reference_kernels", why)
            send("verdict", "")
            return
        if alt is not None and why.startswith("relative error"):
            # Allow 10x the spread between stock's own two kernel paths.
            spread = max(finite_error(a, r) for a, r in zip(alt, ref))
            why = compare(out, ref, tol=max(1e-4, 10 * spread))
            if why:
                why += f" (stock's kernels differ by {spread:.3g})"
        elif alt is not None and compare(alt, ref) and (near_overflow(ref + alt) or
                                                      huge_weights(data)):
            # Stock's two paths disagree with each other about which outputs
            # are non-finite, on a file whose outputs or weights reach 1e36:
            # the file has no single right answer to compare with (counted
            # apart).  Weights alone count because a ReLU6 downstream clamps
            # the overflowing sums (an FMA keeps w * x + acc finite where a
            # product rounded first is Inf, so the kernels' NaN sets differ).
            send("order_sensitive", why)
            why = ""
        elif alt is not None and compare(alt, ref) and non_finite_weights(data):
            # An Inf or NaN weight, and stock's two paths disagree about
            # which outputs are non-finite: XNNPACK's max pool passes a NaN
            # on or not depending on where it sits in the window, the
            # reference kernels skip it and clamp a conv's Inf to FLT_MAX.
            # The delegate follows XNNPACK in the convs and the reference
            # kernels in the pools, so it can match neither: no single
            # right answer (counted apart).
            send("non_finite_weights", why)
            why = ""
    send("verdict", why)


def near_overflow(arrays) -> bool:
    """Whether any finite value reaches 1e36 (products of weights near
    FLT_MAX), the sign that float32 summation order decides the outcome."""
    with np.errstate(invalid="ignore"):
        return any(np.any(np.abs(a[np.isfinite(a)]) > 1e36) for a in arrays
                   if a.dtype.kind == "f")


def _any_float_constant(data: bytes, test) -> bool:
    """Whether test(values) holds for a float32 constant of the model (False
    for a file that does not parse: no such evidence)."""
    try:
        from ai_edge_litert import schema_py_generated as schema

        m = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
        for sub in m.subgraphs or []:
            for t in sub.tensors or []:
                if t.type != schema.TensorType.FLOAT32 or not (0 < t.buffer < len(m.buffers)):
                    continue
                raw = m.buffers[t.buffer].data
                if raw is None or len(raw) < 4:
                    continue
                with np.errstate(invalid="ignore"):
                    if test(np.frombuffer(bytes(raw)[: len(raw) // 4 * 4], np.float32)):
                        return True
    except Exception:  # noqa: BLE001 - an unparsable file: no such evidence
        return False
    return False


def huge_weights(data: bytes) -> bool:
    """Whether a float32 constant of the model reaches 1e36 in magnitude."""
    return _any_float_constant(data, lambda w: np.any(np.abs(w[np.isfinite(w)]) > 1e36))


def non_finite_weights(data: bytes) -> bool:
    """Whether a float32 constant of the model is Inf or NaN."""
    return _any_float_constant(data, lambda w: not np.all(np.isfinite(w)))


def _overflow_edge(o64, r64):
    """Where both sides overflowed or nearly did (weights near FLT_MAX): there
    the summation order alone picks +Inf, -Inf, NaN or a huge finite value."""
    with np.errstate(invalid="ignore"):
        return (~np.isfinite(o64) | (np.abs(o64) > 1e36)) & (~np.isfinite(r64) | (np.abs(r64) > 1e36))


def finite_error(o, r) -> float:
    """Relative error on the positions where both are finite and away from
    overflow: the measure compare() applies its tolerance to."""
    o64, r64 = o.astype(np.float64), r.astype(np.float64)
    if o.shape != r.shape:
        return 0.0
    fin = np.isfinite(o64) & np.isfinite(r64) & ~_overflow_edge(o64, r64)
    if not fin.any():
        return 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        return float(np.linalg.norm(o64[fin] - r64[fin]) / max(np.linalg.norm(r64[fin]), 1e-30))


def compare(out, ref, tol: float = 1e-4) -> str:
    """'' if the delegate's outputs match stock's, else what differs."""
    if len(out) != len(ref):
        return f"{len(out)} outputs vs {len(ref)}"
    for o, r in zip(out, ref):
        if o.shape != r.shape or o.dtype != r.dtype:
            return f"output {o.shape}/{o.dtype} vs {r.shape}/{r.dtype}"
        if o.dtype.kind != "f":
            if not np.array_equal(o, r):
                return "integer output differs"
            continue
        o64, r64 = o.astype(np.float64), r.astype(np.float64)
        edge = _overflow_edge(o64, r64)
        o64, r64 = np.where(edge, 0.0, o64), np.where(edge, 0.0, r64)
        if not np.array_equal(np.isnan(o64), np.isnan(r64)):
            return f"NaN positions differ ({int(np.isnan(o64).sum())} vs {int(np.isnan(r64).sum())})"
        if not (np.array_equal(np.isposinf(o64), np.isposinf(r64))
                and np.array_equal(np.isneginf(o64), np.isneginf(r64))):
            return "Inf positions differ"
        fin = np.isfinite(r64)
        if fin.any():
            with np.errstate(over="ignore", invalid="ignore"):
                err = np.linalg.norm(o64[fin] - r64[fin])
                scale = np.linalg.norm(r64[fin])
            if not err <= tol * scale + 1e-6 * np.sqrt(fin.sum()):
                return f"relative error {err / max(scale, 1e-30):.3g}"
    return ""


# --- the parent: one forked child per case ---------------------------------

def _stock_crashes(data: bytes, case: int, timeout: float, tries: int = 3) -> int:
    """Runs stock alone on `data` in a child process up to `tries` times;
    returns the first signal that killed it, or 0.  A damaged file that
    stock refused once can crash it the next time (XNNPACK reads the bad
    tensor while it prepares the graph), and then a run of ours dies in the
    same place, in stock's code."""
    for _ in range(tries):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                import resource

                from ai_edge_litert.interpreter import Interpreter

                # Twice the cases' limit: under 6 GB this stock run may
                # refuse a huge allocation before it reaches the bad read.
                resource.setrlimit(resource.RLIMIT_AS, (12 << 30, 12 << 30))
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.dup2(devnull, 2)
                _run(Interpreter(model_content=data, num_threads=1), case)
            except BaseException:  # noqa: BLE001 - refusing is not crashing
                pass
            os._exit(0)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                status = 0
                break
            time.sleep(0.01)
        if os.WIFSIGNALED(status):
            return os.WTERMSIG(status)
    return 0


def _child(data: bytes, case: int, wfd: int) -> None:
    import pickle
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))  # a bad size fails, not the host
    devnull = os.open(os.devnull, os.O_WRONLY)  # LiteRT's per-interpreter log lines
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)

    def send(stage, payload):
        blob = pickle.dumps((stage, payload), protocol=4)
        os.write(wfd, struct.pack("<Q", len(blob)))
        view = memoryview(blob)
        while view:
            view = view[os.write(wfd, view):]

    try:
        run_case(data, case, send)
    except BaseException as e:  # noqa: BLE001 - an unexpected Python error is a finding
        send("error", f"{type(e).__name__}: {e}"[:500])
    os._exit(0)


def _read_messages(rfd: int, pid: int, timeout: float):
    """Messages from the child until it exits or `timeout` passes between
    stages; returns (messages, exit status or None if it hung)."""
    import pickle

    buf, msgs, deadline = b"", [], time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return msgs, None
        ready, _, _ = select.select([rfd], [], [], min(left, 1.0))
        if ready:
            chunk = os.read(rfd, 1 << 20)
            if not chunk:
                _, status = os.waitpid(pid, 0)
                return msgs, status
            buf += chunk
            while len(buf) >= 8:
                (size,) = struct.unpack_from("<Q", buf)
                if len(buf) < 8 + size:
                    break
                msgs.append(pickle.loads(buf[8:8 + size]))
                buf = buf[8 + size:]
                deadline = time.monotonic() + timeout  # each stage gets the full timeout


def fuzz_one(data: bytes, case: int, timeout: float) -> dict:
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(rfd)
        _child(data, case, wfd)
    os.close(wfd)
    try:
        msgs, status = _read_messages(rfd, pid, timeout)
    finally:
        os.close(rfd)
    got = dict(msgs)
    result = {"stock": got.get("stock", ("missing", ""))[0],
              "ours": got.get("ours", ("missing", ""))[0]}
    if "error" in got:
        result["outcome"], result["detail"] = "crash", "Python error: " + got["error"]
    elif status is None:
        # Ours hung only if stock had finished and ours had not.
        result["outcome"] = "hang" if "stock" in got and "ours" not in got else "stock_hang"
    elif "stock" not in got:
        result["outcome"], result["detail"] = "stock_crash", f"status {status}"
    elif "ours" not in got:
        result["outcome"], result["detail"] = "crash", f"status {status}"
        # Stock refused the file, then ours died: if stock alone crashes on it
        # too, the crash is stock's (counted apart).
        if got["stock"][0] == "refused":
            sig = _stock_crashes(data, case, timeout)
            if sig:
                result["outcome"] = "stock_crash"
                result["detail"] = (f"status {status}; stock alone also dies on this file "
                                    f"(signal {sig}) though it refused it once")
    elif got["ours"][0] == "refused":
        # "refused_stock_ran": a file stock runs but we refuse (a clear error,
        # still a cost to the user); "refused": both refuse it.
        result["outcome"] = "refused" if got["stock"][0] == "refused" else "refused_stock_ran"
        result["detail"] = got["ours"][1]
        if not got["ours"][1].split(":", 1)[-1].strip():
            result["outcome"] = "crash"  # an error without a message breaks the promise
    elif got["stock"][0] == "refused":
        result["outcome"], result["detail"] = "ran_where_stock_refused", got["stock"][1]
    elif "verdict" not in got:
        result["outcome"], result["detail"] = "crash", f"no verdict, status {status}"
    elif "order_sensitive" in got:
        result["outcome"], result["detail"] = "order_sensitive", got["order_sensitive"]
    elif "non_finite_weights" in got:
        result["outcome"], result["detail"] = "non_finite_weights", got["non_finite_weights"]
    elif "matches_reference_kernels" in got:
        result["outcome"], result["detail"] = ("matches_reference_kernels",
                                               got["matches_reference_kernels"])
    elif "stock_nondeterministic" in got:
        result["outcome"], result["detail"] = ("stock_nondeterministic",
                                               got["stock_nondeterministic"])
    else:
        result["outcome"] = "wrong" if got["verdict"] else "match"
        if got["verdict"]:
            result["detail"] = got["verdict"]
    return result


def _worker(corpus: dict, cases: range, seed: int, timeout: float, out: pathlib.Path,
            report_fd: int) -> None:
    names = sorted(corpus)
    counts: dict = {}
    for case in cases:
        rng = np.random.default_rng([seed, case])
        name = names[case % len(names)]
        kind, data = mutate(corpus[name], rng)
        r = fuzz_one(data, case, timeout)
        key = r["outcome"]
        counts[key] = counts.get(key, 0) + 1
        counts["kind:" + kind] = counts.get("kind:" + kind, 0) + 1
        # Failures, and the files only one side runs (to see what they are).
        if key in ("crash", "hang", "wrong", "refused_stock_ran", "ran_where_stock_refused"):
            (out / f"case-{case}-{key}.tflite").write_bytes(data)
            (out / f"case-{case}-{key}.json").write_text(json.dumps(
                {"case": case, "model": name, "mutation": kind, **r}, indent=1))
    os.write(report_fd, json.dumps(counts).encode())
    os.close(report_fd)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=20261202)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per stage of a case")
    ap.add_argument("--corpus", default=None, help="folder for the base models (made if empty)")
    ap.add_argument("--out", default="fuzz-out", help="folder for the summary and failing cases")
    ap.add_argument("--replay", type=int, default=None, help="rerun one case in-process")
    args = ap.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus_dir = pathlib.Path(args.corpus or (tempfile.gettempdir() + "/cocopie-fuzz-corpus"))
    corpus = make_corpus(corpus_dir)
    names = sorted(corpus)
    if args.replay is not None:
        rng = np.random.default_rng([args.seed, args.replay])
        kind, data = mutate(corpus[names[args.replay % len(names)]], rng)
        got = {}
        run_case(data, args.replay, lambda stage, payload: got.__setitem__(stage, payload))
        print(kind, got)
        return 0
    import cocopie_tf.lite  # noqa: F401 - loaded once here, inherited by every child
    from ai_edge_litert import interpreter  # noqa: F401

    t0 = time.time()
    workers, pipes = [], []
    per = -(-args.cases // args.workers)
    for w in range(args.workers):
        cases = range(w * per, min(args.cases, (w + 1) * per))
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - a worker
            os.close(rfd)
            code = 0
            try:
                _worker(corpus, cases, args.seed, args.timeout, out, wfd)
            except BaseException:  # noqa: BLE001
                import traceback

                traceback.print_exc()
                code = 1
            os._exit(code)
        os.close(wfd)
        workers.append(pid)
        pipes.append(rfd)
    total: dict = {}
    for pid, rfd in zip(workers, pipes):
        chunks = []
        while chunk := os.read(rfd, 1 << 16):
            chunks.append(chunk)
        os.close(rfd)
        os.waitpid(pid, 0)
        for k, v in json.loads(b"".join(chunks) or b"{}").items():
            total[k] = total.get(k, 0) + v
    summary = {"cases": args.cases, "seed": args.seed, "seconds": round(time.time() - t0, 1),
               "corpus": names, **{k: total.get(k, 0) for k in ("crash", "hang", "wrong")},
               "counts": dict(sorted(total.items()))}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    done = sum(v for k, v in total.items() if not k.startswith("kind:"))
    if done != args.cases:
        print(f"only {done} of {args.cases} cases reported", file=sys.stderr)
        return 1
    return 0 if summary["crash"] == summary["hang"] == summary["wrong"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
