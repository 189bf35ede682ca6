"""A small Keras -> ONNX exporter for plain CNN chains (VGG-style: Conv2D,
MaxPooling2D, Flatten, Dense, ReLU), so ONNX Runtime can run the very same
weights in the benchmark.  Not a general converter: anything else raises.

ONNX Runtime runs NCHW; the exported graph takes the model's NHWC input and
transposes it first, so both runtimes are fed the same array."""

from __future__ import annotations

import numpy as np


def _act(layer, name, x, nodes):
    from onnx import helper

    act = getattr(layer, "activation", None)
    act_name = getattr(act, "__name__", "linear")
    if act_name == "relu":
        nodes.append(helper.make_node("Relu", [x], [name + "_relu"]))
        return name + "_relu"
    if act_name != "linear":
        raise ValueError(f"{layer.name}: activation {act_name!r} is not supported by this exporter")
    return x


def keras_to_onnx(model) -> bytes:
    import keras
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shape = [d if d is not None else 1 for d in model.inputs[0].shape]
    nodes, inits = [], []
    x = "input"
    nodes.append(helper.make_node("Transpose", ["input"], ["x_nchw"], perm=[0, 3, 1, 2]))
    x, nchw = "x_nchw", True
    for layer in model.layers:
        name = layer.name
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if type(layer) is keras.layers.Conv2D:
            w, b = layer.get_weights() if layer.use_bias else (layer.get_weights()[0], None)
            inits.append(numpy_helper.from_array(np.ascontiguousarray(w.transpose(3, 2, 0, 1)),
                                                 name + "_w"))
            ins = [x, name + "_w"]
            if b is not None:
                inits.append(numpy_helper.from_array(b, name + "_b"))
                ins.append(name + "_b")
            kh, kw = layer.kernel_size
            attrs = dict(kernel_shape=[kh, kw], strides=list(layer.strides),
                         dilations=list(layer.dilation_rate))
            if layer.padding == "same":
                attrs["auto_pad"] = "SAME_UPPER"
            nodes.append(helper.make_node("Conv", ins, [name], **attrs))
            x = _act(layer, name, name, nodes)
        elif isinstance(layer, keras.layers.MaxPooling2D):
            attrs = dict(kernel_shape=list(layer.pool_size), strides=list(layer.strides))
            if layer.padding == "same":
                attrs["auto_pad"] = "SAME_UPPER"
            nodes.append(helper.make_node("MaxPool", [x], [name], **attrs))
            x = name
        elif isinstance(layer, keras.layers.Flatten):
            if nchw:  # Keras flattens in NHWC order
                nodes.append(helper.make_node("Transpose", [x], [name + "_nhwc"], perm=[0, 2, 3, 1]))
                x, nchw = name + "_nhwc", False
            nodes.append(helper.make_node("Flatten", [x], [name], axis=1))
            x = name
        elif isinstance(layer, keras.layers.Dense):
            w, b = layer.get_weights()
            inits += [numpy_helper.from_array(w, name + "_w"), numpy_helper.from_array(b, name + "_b")]
            nodes.append(helper.make_node("Gemm", [x, name + "_w", name + "_b"], [name]))
            x = _act(layer, name, name, nodes)
        elif isinstance(layer, keras.layers.ReLU):
            nodes.append(helper.make_node("Relu", [x], [name]))
            x = name
        else:
            raise ValueError(f"layer {name!r} ({type(layer).__name__}) is not supported by this exporter")
    nodes.append(helper.make_node("Identity", [x], ["output"]))
    graph = helper.make_graph(
        nodes, "model", [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT,
                                       [d if d is not None else 1 for d in model.outputs[0].shape])],
        inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m.SerializeToString()
