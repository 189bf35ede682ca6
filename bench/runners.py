"""The runtimes the peer benchmarks time, behind one interface: invoke() runs
the model once, `output` is its first output, `last_ms` (worker runners
only) the time the worker measured for that run.

    LiteRunner     LiteRT (stock XNNPACK, or the cocopie delegate) in this process
    OrtRunner      ONNX Runtime in this process (intra-op spinning off)
    WorkerRunner   a runtime in a process of its own, e.g. DeepSparse, MNN or TVM
                   in its own venv (bench/*_worker.py, bench/worker_protocol.py)

make_runner() builds the in-process ones from a runtime's name.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent

# The runtimes make_runner() knows; deepsparse runs only in its own worker.
# "cocopie_1t" is the delegate at 1 thread whatever the block's thread count:
# the peer benchmark's paired 1 -> 2 thread scaling.
RUNTIMES = ("xnnpack", "onnxruntime", "cocopie_static", "cocopie")
KNOWN = RUNTIMES + ("cocopie_1t",)


class LiteRunner:
    def __init__(self, interp, x):
        self.it = interp
        interp.allocate_tensors()
        interp.set_tensor(interp.get_input_details()[0]["index"], x)
        self.out_index = interp.get_output_details()[0]["index"]

    def invoke(self):
        self.it.invoke()

    @property
    def output(self):
        return self.it.get_tensor(self.out_index)


class OrtRunner:
    def __init__(self, onnx_bytes, threads, x):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.s = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
        self.x = x
        self.output = None

    def invoke(self):
        self.output = self.s.run(None, {"input": self.x})[0]


def make_runner(kind, tfl, onnx_bytes, threads, x, tune_cache):
    """The in-process runner of `kind` (one of KNOWN) for the .tflite
    bytes `tfl` (ONNX Runtime: `onnx_bytes`, the same weights)."""
    if kind == "onnxruntime":
        return OrtRunner(onnx_bytes, threads, x)
    from ai_edge_litert.interpreter import Interpreter

    from cocopie_tf import lite

    if kind == "xnnpack":
        return LiteRunner(Interpreter(model_content=tfl, num_threads=threads), x)
    if kind in ("cocopie", "cocopie_1t"):
        return LiteRunner(lite.Interpreter(model_content=tfl,
                                           num_threads=1 if kind == "cocopie_1t" else threads,
                                           tune="on", tune_cache=tune_cache), x)
    if kind == "cocopie_static":
        return LiteRunner(lite.Interpreter(model_content=tfl, num_threads=threads, jit="static",
                                           tune="on", tune_cache=tune_cache), x)
    raise ValueError(f"unknown runtime {kind!r}; known: {', '.join(KNOWN)}")


def report_summary(runner) -> dict:
    """What the peer table shows of the cocopie delegate's report."""
    report = runner.it.delegate_report()
    return dict(
        claimed=len(report),
        engines=sorted({e.get("engine", "") for e in report if e.get("engine")}),
        dense_macs=sum(e["dense_macs"] for e in report),
        executed_macs=sum(e["executed_macs"] for e in report),
        code_bytes=sum(e.get("code_bytes", 0) for e in report),
        # what the tuner picked per generated node: M x V, code segments
        jit_tiles=[f"{e['jit_filters']}x{e['jit_vectors']}/{e['jit_segments']}"
                   for e in report if e.get("engine", "").startswith("jit_")],
        generate_ms=sum(e.get("generate_ms", 0) for e in report))


class WorkerRunner:
    """A runtime in a process of its own, one JSON request per line (see
    bench/worker_protocol.py): the first request builds the runtime and
    answers {"output": path.npy, ...}, {"runs": 1} answers {"ms": [t]}.  The
    caller blocks while the worker runs, so the two never share cores; the
    worker times each run itself."""

    def __init__(self, python, script, first_request, env=None):
        self.p = subprocess.Popen([str(python), str(script)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True,
                                  env=dict(os.environ, **(env or {})))
        try:
            self.reply = self._ask(first_request)
            self.output = np.load(self.reply["output"])
        except BaseException:
            self.close()  # no worker left behind
            raise
        self.last_ms = None

    def _ask(self, req):
        self.p.stdin.write(json.dumps(req) + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"the worker {self.p.args[1]} exited (code {self.p.wait()})")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"the worker {self.p.args[1]} failed: {reply['error']}")
        return reply

    def invoke(self):
        self.last_ms = self._ask({"runs": 1})["ms"][0]

    def close(self):
        try:
            self._ask({"quit": True})
        except Exception:
            pass
        try:
            self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
