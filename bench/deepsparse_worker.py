"""DeepSparse in its own process (it needs Python <= 3.11 and numpy < 2, so it
lives in its own virtual environment; see bench/bench_peers.py --deepsparse).
The protocol is bench/worker_protocol.py's; the first request is
{"onnx": path, "input": path.npy, "threads": n}.
"""

from __future__ import annotations

import os

from worker_protocol import serve

os.environ.setdefault("NM_DISABLE_ANALYTICS", "True")


def load(req):
    import numpy as np
    from deepsparse import compile_model

    engine = compile_model(req["onnx"], batch_size=1, num_cores=int(req["threads"]))
    x = np.load(req["input"])
    path = req["input"] + ".deepsparse.npy"
    np.save(path, engine.run([x])[0])
    return ({"output": path, "version": __import__("deepsparse").__version__},
            lambda: engine.run([x]))


if __name__ == "__main__":
    serve(load)
