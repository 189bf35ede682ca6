"""Apache TVM (Relax) in its own process (bench/bench_peers.py --tvm).

TVM compiles the ONNX graph for this CPU (LLVM, `mcpu` of the host).  Without
tuning its convs are plain loop nests (hundreds of ms per layer), so the
benchmark tunes each model with MetaSchedule first (`trials` in the first
request) and keeps the tuning database in `cache` (one directory per graph
without its weights, CPU and trial count), so the 2-thread block and later
runs reuse it.  The
process pins itself to the block's first `threads` CPUs (after tuning);
the runner sets TVM_NUM_THREADS and TVM_THREAD_POOL_SPIN_COUNT=0 (no
spin-waiting on the cores the next runtime needs) before start.

The protocol is bench/worker_protocol.py's; the first request is
{"onnx": path, "input": path.npy, "threads": n, "trials": k, "cache": dir}
(tune first when k > 0).
TVM 0.27 needs apache-tvm-ffi 0.1.14.post0 (0.1.15.post2 crashes on save)
and, to tune, psutil, xgboost and cloudpickle.
"""

from __future__ import annotations

import hashlib
import os
import pathlib

from worker_protocol import pin, serve


def compile_model(onnx_path: str, cores: int, trials: int, cache: str | None):
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx
    from tvm.target import codegen

    model = onnx.load(onnx_path)
    inp = model.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    mod, params = relax.frontend.detach_params(from_onnx(model, shape_dict={inp.name: shape}))
    passes = [relax.transform.BindParams("main", params["main"])] if params.get("main") else []
    # Lowered and fused before tuning: MetaSchedule tunes the fused TIR functions.
    mod = tvm.transform.Sequential(passes + [
        relax.transform.DecomposeOpsForInference(), relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
        relax.transform.FuseOps(), relax.transform.FuseTIR()])(mod)
    cpu = codegen.llvm_get_system_cpu()
    # Compiled and tuned for all the machine's cores, whatever the block's
    # thread count (TVM_NUM_THREADS sets that at run time): one tuning per
    # model serves the 1- and 2-thread blocks.
    target = tvm.target.Target({"kind": "llvm", "mcpu": cpu, "num-cores": cores})
    tuned = 0
    if trials > 0:
        from tvm.s_tir.meta_schedule.relax_integration import tune_relax

        # Keyed by the graph without its weights (the schedules do not depend
        # on them, and the benchmark draws new random weights each run).
        shape_only = onnx.ModelProto()
        shape_only.CopyFrom(model)
        for init in shape_only.graph.initializer:
            init.ClearField("raw_data")
            init.ClearField("float_data")
        key = hashlib.sha256(shape_only.SerializeToString()
                             + f"{cpu}/{cores}/{trials}".encode()).hexdigest()[:16]
        work = pathlib.Path(cache or pathlib.Path(onnx_path).parent) / f"tvm-{key}"
        done = work / "tuned"
        work.mkdir(parents=True, exist_ok=True)
        if not done.exists():
            tune_relax(mod, params={}, target=target, work_dir=str(work), max_trials_global=trials)
            done.write_text(str(trials))  # only a finished tuning is reused
        # The tuned schedules replace the plain loop nests here (compile_relax
        # from the tuning API built the untuned loops: 487 ms against 14.9).
        with target, tvm.transform.PassContext(opt_level=3):
            mod = relax.transform.MetaScheduleApplyDatabase(str(work))(mod)
        tuned = trials
    ex = relax.build(mod, target)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm, shape, cpu, tuned, tvm.__version__


def load(req):
    import numpy as np
    import tvm

    threads = int(req["threads"])
    # The tuner logs every batch: to a file beside the databases.
    log_dir = pathlib.Path(req.get("cache") or pathlib.Path(req["onnx"]).parent)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = os.open(str(log_dir / "tvm_worker.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    cores = len(os.sched_getaffinity(0))
    vm, shape, cpu, tuned, version = compile_model(
        req["onnx"], cores, int(req.get("trials", 0)), req.get("cache"))
    # Pinned after tuning, which measures candidates in processes of its own
    # on every core.
    pin(threads)
    a = np.load(req["input"])
    if list(a.shape) != shape:
        raise ValueError(f"TVM input shape {shape} != {list(a.shape)}")
    x = tvm.runtime.tensor(a)
    out = vm["main"](x)
    path = req["input"] + ".tvm.npy"
    np.save(path, (out if hasattr(out, "numpy") else out[0]).numpy())
    return ({"output": path, "version": version, "mcpu": cpu, "tuned_trials": tuned},
            lambda: vm["main"](x))


if __name__ == "__main__":
    serve(load)
