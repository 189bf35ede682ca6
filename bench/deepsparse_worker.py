"""DeepSparse in its own process (it needs Python <= 3.11 and numpy < 2, so it
lives in its own virtual environment; see bench/bench_peers.py --deepsparse).

Protocol on stdin/stdout, one JSON object per line:
  -> {"onnx": path, "input": path.npy, "threads": n}   compile; replies {"output": path.npy}
  -> {"runs": k}                                         times k runs; replies {"ms": [...]}
  -> {"quit": true}
The main process blocks while this one runs, so the two never share cores.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("NM_DISABLE_ANALYTICS", "True")


def main():
    import numpy as np
    from deepsparse import compile_model

    engine = x = None
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("quit"):
            break
        if "onnx" in req:
            engine = compile_model(req["onnx"], batch_size=1, num_cores=int(req["threads"]))
            x = np.load(req["input"])
            out = engine.run([x])[0]
            path = req["input"] + ".deepsparse.npy"
            np.save(path, out)
            reply = {"output": path, "version": __import__("deepsparse").__version__}
        else:
            ms = []
            for _ in range(int(req["runs"])):
                t = time.perf_counter()
                engine.run([x])
                ms.append((time.perf_counter() - t) * 1e3)
            reply = {"ms": ms}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
