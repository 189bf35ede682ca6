"""The .tflite file itself as an ONNX graph, so ONNX Runtime and DeepSparse
run exactly the weights LiteRT and the delegate run (BatchNorm already folded
by the TFLite converter, pruned zeros where they are).

Covers the ops of the benchmark's models (VGG, ResNet, MobileNet families):
CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, ADD, MUL, MAX_POOL_2D,
AVERAGE_POOL_2D, MEAN, PAD, RESHAPE, SOFTMAX, RELU, RELU6, with fused
activations) and of the applications (cocopie_tf.apps): DEPTH_TO_SPACE,
RESIZE_NEAREST_NEIGHBOR and RESIZE_BILINEAR by integer factors, LOGISTIC,
TANH.  Anything else raises ValueError naming the op.

Layout: the ONNX graph takes the model's NHWC input, transposes it once to
NCHW, keeps 4-D tensors NCHW, and transposes back to NHWC before a RESHAPE
(flatten order) and at 4-D outputs, so its outputs have the .tflite's shapes.
"""

from __future__ import annotations

import numpy as np

_FUSED = {0: None, 1: "Relu", 3: "Relu6"}


def tflite_to_onnx(tflite_bytes: bytes, opset: int = 17) -> bytes:
    import onnx
    from ai_edge_litert import schema_py_generated as schema
    from onnx import TensorProto, helper, numpy_helper

    m = schema.ModelT.InitFromPackedBuf(bytearray(tflite_bytes), 0)
    if len(m.subgraphs) != 1:
        raise ValueError("only single-subgraph models are supported")
    g = m.subgraphs[0]
    opcodes = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    nodes, inits = [], []
    nchw = {}  # tensor index -> True when its ONNX value is NCHW
    names = {}

    def const(t):
        tensor = g.tensors[t]
        buf = m.buffers[tensor.buffer].data
        if buf is None or len(buf) == 0:
            return None
        if tensor.type != schema.TensorType.FLOAT32:
            raise ValueError(f"tensor {tensor.name!r}: only float32 constants are supported")
        return np.frombuffer(bytes(buf), np.float32).reshape(tensor.shape)

    def const_int(t):
        tensor = g.tensors[t]
        buf = bytes(m.buffers[tensor.buffer].data)
        dt = {schema.TensorType.INT32: np.int32, schema.TensorType.INT64: np.int64}[tensor.type]
        return np.frombuffer(buf, dt).reshape(tensor.shape)

    counter = [0]

    def fresh(stem):
        counter[0] += 1
        return f"{stem}_{counter[0]}"

    def add_init(arr, stem):
        name = fresh(stem)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def value(t, want_nchw=None):
        """ONNX name of tensor t, in the layout asked for (4-D only)."""
        if t not in names:
            c = const(t)
            if c is None:
                raise ValueError(f"tensor {g.tensors[t].name!r} has no producer")
            names[t] = add_init(c, "const")
            nchw[t] = False
        if want_nchw is None or len(g.tensors[t].shape) != 4 or nchw[t] == want_nchw:
            return names[t]
        out = fresh("t")
        perm = [0, 3, 1, 2] if want_nchw else [0, 2, 3, 1]
        nodes.append(helper.make_node("Transpose", [names[t]], [out], perm=perm))
        return out

    def emit(op, ins, t_out, is_nchw, act=0, **attrs):
        out = fresh(op.lower())
        nodes.append(helper.make_node(op, ins, [out], **attrs))
        a = _FUSED.get(act, "?")
        if a == "?":
            raise ValueError(f"fused activation {act} is not supported")
        if a == "Relu":
            r = fresh("relu")
            nodes.append(helper.make_node("Relu", [out], [r]))
            out = r
        elif a == "Relu6":
            r = fresh("relu6")
            lo, hi = add_init(np.float32(0), "lo"), add_init(np.float32(6), "hi")
            nodes.append(helper.make_node("Clip", [out, lo, hi], [r]))
            out = r
        names[t_out], nchw[t_out] = out, is_nchw

    def pads_for(opt, in_hw, k_hw, strides, dil):
        if opt.padding == schema.Padding.VALID:
            return [0, 0, 0, 0]
        pads = []
        for n, k, s, d in zip(in_hw, k_hw, strides, dil):
            out = -(-n // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - n)
            pads.append((total // 2, total - total // 2))
        return [pads[0][0], pads[1][0], pads[0][1], pads[1][1]]

    for t in g.inputs:
        shape = [int(d) for d in g.tensors[t].shape]
        names[t], nchw[t] = "input", False
        graph_input = helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)

    for op in g.operators:
        code = m.operatorCodes[op.opcodeIndex]
        name = opcodes.get(max(code.builtinCode, code.deprecatedBuiltinCode), "?")
        o = op.builtinOptions
        ins, out = list(op.inputs), op.outputs[0]
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            x = value(ins[0], True)
            w = const(ins[1])
            in_shape = g.tensors[ins[0]].shape
            strides = [o.strideH, o.strideW]
            dil = [o.dilationHFactor, o.dilationWFactor]
            if name == "CONV_2D":
                w_onnx, group = w.transpose(0, 3, 1, 2), 1  # OHWI -> OIHW
            else:  # 1 x H x W x C*M -> C*M x 1 x H x W
                w_onnx, group = w.transpose(3, 0, 1, 2), int(in_shape[3])
            k_hw = list(w_onnx.shape[2:])
            conv_ins = [x, add_init(w_onnx, "w")]
            if len(ins) > 2 and ins[2] >= 0:
                conv_ins.append(add_init(const(ins[2]), "b"))
            emit("Conv", conv_ins, out, True, o.fusedActivationFunction, kernel_shape=k_hw,
                 strides=strides, dilations=dil, group=group,
                 pads=pads_for(o, in_shape[1:3], k_hw, strides, dil))
        elif name == "FULLY_CONNECTED":
            x = value(ins[0], False)
            w = const(ins[1])
            x2 = fresh("flat")
            nodes.append(helper.make_node("Reshape", [x, add_init(np.array([-1, w.shape[1]],
                                                                           np.int64), "s")], [x2]))
            gin = [x2, add_init(w, "w")]
            if len(ins) > 2 and ins[2] >= 0:
                gin.append(add_init(const(ins[2]), "b"))
            emit("Gemm", gin, out, False, o.fusedActivationFunction, transB=1)
        elif name in ("ADD", "MUL"):
            a_nchw = nchw.get(ins[0], False) and len(g.tensors[ins[0]].shape) == 4
            a, b = value(ins[0]), value(ins[1], a_nchw if len(g.tensors[ins[1]].shape) == 4 else None)
            if a_nchw and len(g.tensors[ins[1]].shape) != 4 and ins[1] not in nchw:
                raise ValueError(f"{name}: broadcasting a constant onto NCHW is not supported")
            emit(name.title(), [a, b], out, a_nchw, getattr(o, "fusedActivationFunction", 0))
        elif name in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
            x = value(ins[0], True)
            k_hw, strides = [o.filterHeight, o.filterWidth], [o.strideH, o.strideW]
            pads = pads_for(o, g.tensors[ins[0]].shape[1:3], k_hw, strides, [1, 1])
            kw = dict(kernel_shape=k_hw, strides=strides, pads=pads)
            if name == "AVERAGE_POOL_2D":
                kw["count_include_pad"] = 0
            emit("MaxPool" if name == "MAX_POOL_2D" else "AveragePool", [x], out, True,
                 o.fusedActivationFunction, **kw)
        elif name == "MEAN":
            axes = sorted(int(a) % 4 for a in const_int(ins[1]).ravel())
            if axes != [1, 2] or len(g.tensors[ins[0]].shape) != 4:
                raise ValueError("MEAN: only the spatial mean of a 4-D tensor is supported")
            keep = 1 if o.keepDims else 0
            emit("ReduceMean", [value(ins[0], True)], out, bool(keep), axes=[2, 3], keepdims=keep)
        elif name == "PAD":
            p = const_int(ins[1]).reshape(4, 2)
            x = value(ins[0], True)
            onnx_p = [p[0, 0], p[3, 0], p[1, 0], p[2, 0], p[0, 1], p[3, 1], p[1, 1], p[2, 1]]
            emit("Pad", [x, add_init(np.array(onnx_p, np.int64), "pads")], out, True)
        elif name == "RESHAPE":
            shape = np.array(g.tensors[out].shape, np.int64)
            emit("Reshape", [value(ins[0], False), add_init(shape, "shape")], out, False)
        elif name == "SOFTMAX":
            emit("Softmax", [value(ins[0], False)], out, False, axis=-1)
        elif name == "DEPTH_TO_SPACE":
            # TFLite's channel order (block row, block column, channel) is
            # ONNX's DCR mode.
            emit("DepthToSpace", [value(ins[0], True)], out, True, blocksize=o.blockSize,
                 mode="DCR")
        elif name in ("RESIZE_NEAREST_NEIGHBOR", "RESIZE_BILINEAR"):
            h, w = (int(d) for d in g.tensors[ins[0]].shape[1:3])
            oh, ow = (int(d) for d in const_int(ins[1]).ravel())
            if oh % h or ow % w or o.alignCorners:
                raise ValueError(f"{name}: only integer upscaling without align_corners is "
                                 "supported")
            scales = add_init(np.array([1, 1, oh // h, ow // w], np.float32), "scales")
            if name == "RESIZE_NEAREST_NEIGHBOR":
                # An integer factor repeats each pixel in every TFLite mode.
                kw = dict(mode="nearest", coordinate_transformation_mode="asymmetric",
                          nearest_mode="floor")
            else:
                kw = dict(mode="linear", coordinate_transformation_mode="half_pixel"
                          if o.halfPixelCenters else "asymmetric")
            emit("Resize", [value(ins[0], True), "", scales], out, True, **kw)
        elif name in ("LOGISTIC", "TANH"):
            emit("Sigmoid" if name == "LOGISTIC" else "Tanh", [value(ins[0])], out,
                 nchw[ins[0]])
        elif name in ("RELU", "RELU6"):
            x = value(ins[0])
            emit("Identity", [x], out, nchw[ins[0]], 1 if name == "RELU" else 3)
        else:
            raise ValueError(f"operator {name} is not supported by this exporter")

    outputs, out_infos = [], []
    for i, t in enumerate(g.outputs):
        nm = f"output{i}" if i else "output"
        nodes.append(helper.make_node("Identity", [value(t, False)], [nm]))
        out_infos.append(helper.make_tensor_value_info(nm, TensorProto.FLOAT,
                                                       [int(d) for d in g.tensors[t].shape]))
    graph = helper.make_graph(nodes, "tflite", [graph_input], out_infos, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()
