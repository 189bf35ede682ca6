"""Does stock LiteRT's XNNPACK run our pruned MobileNetV2 sparse?

    python bench/xnnpack_sparse_check.py [--rounds 30]

XNNPACK has a sparse inference mode (the "Fast Sparse ConvNets" NCHW
kernels) that TFLite enables for models whose weights the converter stored
sparse (`tf.lite.Optimize.EXPERIMENTAL_SPARSITY`: DENSIFY operators) and
whose graph fits its rules: a first 3x3 stride-2 conv padded by 1 on every
side, 1x1 convs at least 2/3 zeros, 3x3 depthwise convs, a spatial MEAN at
the end.  If it ran, it would be the natural XNNPACK peer for the peer
benchmark's MobileNetV2 row (1x1 convs connectivity-pruned 3.6x, so 72%
zeros).  This script converts that model twice, dense and with sparse
weights, and times both under stock LiteRT (alternating, a 3 ms busy wait
before each run) next to the cocopie delegate on the dense file; it also
compares the sparse file's logits with the dense one's (NCHW sparse kernels
sum in another order, so equal bits mean the dense kernels ran).  Two
graphs: keras.applications' MobileNetV2 at 224x224 (SAME stem and stride-1
depthwise padding, explicit asymmetric PADs before strided depthwise convs)
and a 225x225 variant whose padding is symmetric everywhere (the stem an
explicit ZeroPadding2D(1) + VALID conv).  Random weights: a speed check.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from pruned_models import prune_1x1, prune_depthwise  # noqa: E402


def mobilenetv2(size, symmetric_stem):
    """Pruned MobileNetV2 (logits out).  symmetric_stem: the stem conv as
    ZeroPadding2D(1) + VALID conv, the rest of the graph unchanged."""
    import keras

    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV2(weights=None, input_shape=(size, size, 3),
                                          classifier_activation=None)
    prune_1x1(base, connectivity=3.6)
    prune_depthwise(base)
    if not symmetric_stem:
        inp = keras.Input((size, size, 3), batch_size=1)
        return keras.Model(inp, base(inp))

    def valid_stem(layer):
        cfg = layer.get_config()
        if layer.name == "Conv1":
            cfg["padding"] = "valid"
        return layer.__class__.from_config(cfg)

    body = keras.models.clone_model(base, input_tensors=keras.Input((size + 2, size + 2, 3), batch_size=1),
                                    clone_function=valid_stem)
    for layer in body.layers:
        if layer.get_weights():
            layer.set_weights(base.get_layer(layer.name).get_weights())
    inp = keras.Input((size, size, 3), batch_size=1)
    return keras.Model(inp, body(keras.layers.ZeroPadding2D(1)(inp)))


def busy(ms):
    end = time.perf_counter() + ms / 1e3
    while time.perf_counter() < end:
        pass


def check(name, model, rounds):
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from cocopie_tf import lite

    dense = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    sparse = conv.convert()
    x = np.random.default_rng(0).standard_normal(model.input.shape).astype(np.float32)
    for threads in (1, 2):
        its = {"xnnpack dense": Interpreter(model_content=dense, num_threads=threads),
               "xnnpack sparse-stored": Interpreter(model_content=sparse, num_threads=threads),
               "cocopie": lite.Interpreter(model_content=dense, num_threads=threads)}
        outs = {}
        for k, it in its.items():
            it.allocate_tensors()
            it.set_tensor(it.get_input_details()[0]["index"], x)
            it.invoke()
            outs[k] = it.get_tensor(it.get_output_details()[0]["index"]).copy()
        if threads == 1:
            ops = [o["op_name"] for o in its["xnnpack sparse-stored"]._get_ops_details()]
            print(f"{name}: {len(dense) / 1e6:.1f} MB dense, {len(sparse) / 1e6:.1f} MB with "
                  f"{ops.count('DENSIFY')} DENSIFY ops; sparse-stored logits equal the dense "
                  f"ones bit for bit: {np.array_equal(outs['xnnpack dense'], outs['xnnpack sparse-stored'])}")
        times = {k: [] for k in its}
        order = list(its)
        rng = np.random.default_rng(threads)
        for _ in range(rounds):
            for j in rng.permutation(len(order)):
                it = its[order[j]]
                busy(3)
                t0 = time.perf_counter()
                it.invoke()
                times[order[j]].append(time.perf_counter() - t0)
        med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
        d, s = np.array(times["xnnpack dense"]), np.array(times["xnnpack sparse-stored"])
        print(f"  {threads} thread(s): " + ", ".join(f"{k} {v:.2f} ms" for k, v in med.items())
              + f"; dense / sparse-stored per round {float(np.median(d / s)):.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    check("MobileNetV2 224 (keras.applications)", mobilenetv2(224, False), args.rounds)
    check("MobileNetV2 225, symmetric padding", mobilenetv2(225, True), args.rounds)


if __name__ == "__main__":
    main()
