"""The worker side of bench/runners.py's WorkerRunner protocol, shared by the
runtimes that run in processes of their own (deepsparse_worker.py,
mnn_worker.py, tvm_worker.py).  Only the standard library: each worker runs
in its runtime's own virtual environment.

One JSON object per line on stdin, one reply per line on stdout:
  -> {"onnx": path, "input": path.npy, "threads": n, ...}   load; replies what load() returns
  -> {"runs": k}                                              times k runs; replies {"ms": [...]}
  -> {"quit": true}
A failure replies {"error": "Type: message"} and the worker keeps serving, so
the main process reports it instead of waiting on a dead pipe.  The main
process blocks while a worker runs, so the two never share cores.
"""

from __future__ import annotations

import json
import os
import sys
import time


def serve(load) -> None:
    """Answers requests until quit.  `load(request)` builds the runtime for
    the first request and returns (reply, run): the reply names the output
    file and version, run() does one inference."""
    # Runtimes print to stdout from C++: the replies keep a copy of stdout of
    # their own and fd 1 goes to stderr.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    run = None
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("quit"):
            break
        try:
            if "onnx" in req:
                reply, run = load(req)
            else:
                if run is None:
                    raise RuntimeError("no model loaded")
                ms = []
                for _ in range(int(req["runs"])):
                    t = time.perf_counter()
                    run()
                    ms.append((time.perf_counter() - t) * 1e3)
                reply = {"ms": ms}
        except Exception as e:  # the main process reports it and stops using this worker
            reply = {"error": f"{type(e).__name__}: {e}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def pin(threads: int) -> list[int]:
    """Restricts this process to the first `threads` CPUs it may use."""
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cpus)
    return cpus
