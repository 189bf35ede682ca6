"""MNN in its own process (bench/bench_peers.py --mnn): MNN's CPU backend
runs on OpenMP, whose thread count follows the CPUs the process may use rather
than MNN's numThread, so this process pins itself to the first `threads`
CPUs before MNN starts; and its threads must not spin on the cores the next
runtime needs (OMP_WAIT_POLICY=PASSIVE, set by the runner before start).

The protocol is bench/worker_protocol.py's; the first request is
{"onnx": path, "input": path.npy, "threads": n}.

The ONNX model is converted by the converter's extension module (`_tools`)
directly: MNN's Python wrapper `MNN.tools` pip-installs a logging SDK into
whichever `pip` is on PATH and sends usage logs to a remote endpoint, so it
is never imported here.  Sessions run at precision "high" (fp32; lower
precisions may use bf16 or fp16); MNN's 3x3 convs run Winograd, whose
outputs differ from the direct sum by about 1e-4 relative.
"""

from __future__ import annotations

from worker_protocol import pin, serve


def load(req):
    threads = int(req["threads"])
    cpus = pin(threads)  # before MNN starts its OpenMP threads
    import numpy as np

    import _tools  # MNN's converter extension (not MNN.tools: see above)
    import MNN

    mnn_path = req["onnx"] + ".mnn"
    _tools.mnnconvert(["mnnconvert", "-f", "ONNX", "--modelFile", req["onnx"],
                       "--MNNModel", mnn_path, "--bizCode", "cocopie_bench"])
    interp = MNN.Interpreter(mnn_path)
    session = interp.createSession({"numThread": threads, "precision": "high"})
    x = np.load(req["input"])
    inp = interp.getSessionInput(session)
    if tuple(inp.getShape()) != x.shape:
        raise ValueError(f"MNN input shape {inp.getShape()} != {x.shape}")
    # The same dimension type as the input: the raw array is copied as is (a
    # different type would make MNN transpose it).
    inp.copyFrom(MNN.Tensor(list(x.shape), MNN.Halide_Type_Float, x, inp.getDimensionType()))
    interp.runSession(session)
    out = interp.getSessionOutput(session)
    host = MNN.Tensor(out.getShape(), MNN.Halide_Type_Float,
                      np.zeros(out.getShape(), np.float32), out.getDimensionType())
    out.copyToHostTensor(host)
    path = req["input"] + ".mnn.npy"
    np.save(path, np.array(host.getNumpyData(), np.float32).reshape(out.getShape()))
    return ({"output": path, "version": MNN.version(), "cpus": cpus},
            lambda: interp.runSession(session))


if __name__ == "__main__":
    serve(load)
