"""The peer benchmark (the seed's Figure 4 on this machine): the same pruned
weights on LiteRT + XNNPACK (dense), ONNX Runtime (dense), DeepSparse 1.8
(sparse, in its own process), MNN 3.6 (dense, Winograd 3x3 convs, in its own
process), Apache TVM 0.27 (tuned by MetaSchedule, in its own process) and the
cocopie delegate (generated code, and its static kernels for
comparison), at 1 and 2 threads.

    python bench/bench_peers.py [--runs 21] [--resnet50] [--settle-ms 3] [--consecutive 1] \\
        [--instances 3] \\
        [--deepsparse /path/to/venv-with-deepsparse/bin/python] \\
        [--mnn /path/to/venv-with-mnn/bin/python] \\
        [--tvm /path/to/venv-with-tvm/bin/python [--tvm-trials 64] [--tvm-models conv]] \\
        [--json out.json] [--chart out.png] [--out table.md]

Every runtime's output is checked against stock LiteRT before timing (a
worker runtime that fails to start or disagrees is left out of that block,
its reason printed and kept in the row's `skipped`).  All
runtimes alternate round by round in one session (each runs once per round), ONNX
Runtime with intra-op spinning off (otherwise its idle threads take the core
the next runtime needs), the runtimes in a new seeded order every round (a
runtime's place in the round, and the runtime before it, moved its time by up
to 7%), an untimed 3 ms
busy wait before every timed run
(XNNPACK's pool spins after its runs; --settle-ms), all 1-thread blocks
before all 2-thread blocks, 8 warm-up runs per runtime and block.  DeepSparse runs in a worker process that
the main process waits on, so the two never share cores.  So every timed run
follows the other runtimes' runs, whose weights have evicted its own from the
caches: an application that runs several models in turn.  --consecutive K runs
each runtime K times per round and times runs 2..K only, each right after the
same model ran (one model on a stream of inputs); rounds still alternate.
Every runtime is built --instances times (3; worker runtimes as that many
processes) and round r times copy r % N of each: identical interpreters in
one process ran up to 1.15x apart, each copy consistently (presumably where
its buffers landed), so one copy per runtime made a ratio of two placements.  The
`steal` column is
the share of CPU time the hypervisor took while a block ran (/proc/stat): on a
shared VM, 2-thread rows with steal above a few percent are not comparable.
Below the table, issue 11's targets are judged by bench/ratios.py: per
round, each peer's time over cocopie's (the two saw the same host speed),
the median of those ratios and its 95% interval, and `met`, `missed` or
`within noise` (the interval holds the goal).  The layer's 1 -> 2 thread
scaling is paired the same way: its 2-thread block also runs cocopie at 1
thread every round (`cocopie_1t`; comparing the 1- and 2-thread blocks,
minutes apart, read the host's drift: 1.40-1.71x over three sessions,
where paired rounds read 1.72-1.80x over two sessions).  The
`cross-core` column (before/after the block) is how much slower one CPU
reads data another CPU wrote than its own: ~1.1 where they share an L3, ~3
where a VM's vCPUs sit on different AMD CCDs, which slows every runtime's
2-thread runs (cocopie's most: docs/engine.md section 30).  The `cpu speed`
column (before/after) is how much slower the slower vCPU ran a fixed chain
of multiply-adds than the faster, each alone: 1.0 when they run at one
speed, up to ~1.6 on this VM when another guest shares one vCPU's host core
(a 2-thread run is then bound by its slow thread: engine.md section 38).

DeepSparse needs Python <= 3.11 and numpy < 2:
    python3.11 -m venv /tmp/ds && /tmp/ds/bin/pip install deepsparse==1.8.0 'numpy<2' onnx
(its community license allows evaluation; NM_DISABLE_ANALYTICS is set).
MNN runs in its own process too (bench/mnn_worker.py: pinned to the block's
CPUs, OpenMP threads passive), from its own venv:
    python3 -m venv /tmp/mnn && /tmp/mnn/bin/pip install MNN==3.6.1 numpy
Its outputs are checked to MNN_TOLERANCE (Winograd 3x3 convs differ from the
direct sum by ~1e-4 relative); every other runtime's to 1e-4.

TVM runs in its own process too (bench/tvm_worker.py), from its own venv:
    python3 -m venv /tmp/tvm && /tmp/tvm/bin/pip install apache-tvm==0.27.0.post1 \
        apache-tvm-ffi==0.1.14.post0 onnx psutil xgboost cloudpickle numpy
Untuned, its convs are plain loop nests (0.2-4.5 s per model), so each model
is tuned first by MetaSchedule for --tvm-trials measured candidates over all
of its kernels (a short budget: TVM's tuned figures improve with thousands),
the tuning databases kept in --tvm-cache (one tuning per model serves both
thread counts and later runs).  Tuning takes minutes per model on 2 cores, so
TVM runs only on the models --tvm-models names (default: the single conv
layer).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("NM_DISABLE_ANALYTICS", "True")
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

from pruned_models import prune_1x1, prune_depthwise, prune_model  # noqa: E402
from ratios import SCALING, fastest_peer, targets_table  # noqa: E402
from runners import RUNTIMES, WorkerRunner, make_runner, report_summary  # noqa: E402
from timing import (cpu_speed_ratio, cpu_ticks, cross_core_ratio, machine_info,  # noqa: E402
                    steal_pct, summary)
from tflite_to_onnx import tflite_to_onnx  # noqa: E402


# --- models (random weights; pruning structure as ADMM leaves it) ------------

def _fixed_batch(model, shape):
    import keras

    i = keras.Input(shape, batch_size=1)
    return keras.Model(i, model(i))


def layer_56():
    import keras

    keras.utils.set_random_seed(0)
    i = keras.Input((56, 56, 128), batch_size=1)
    m = keras.Model(i, keras.layers.Conv2D(128, 3, padding="same")(i))
    prune_model(m, skip_first=False, connectivity=2.0)
    return m


def vgg16(prune=True):
    import keras

    keras.utils.set_random_seed(0)
    m = keras.applications.VGG16(weights=None, input_shape=(32, 32, 3), classes=10,
                                 classifier_activation=None)
    if prune:
        prune_model(m, connectivity=3.6)
    return _fixed_batch(m, (32, 32, 3))


def app(name, size, prune, prune_1x1_convs=False, prune_dw=False):
    import keras

    keras.utils.set_random_seed(0)
    m = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
    if prune:
        prune_model(m, connectivity=3.6)
    if prune_1x1_convs:
        prune_1x1(m, connectivity=3.6)
    if prune_dw:
        prune_depthwise(m)
    return _fixed_batch(m, (size, size, 3))


def convert(model):
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


# --- runners: bench/runners.py ---------------------------------------------


def rel(a, b):
    a = np.asarray(a, np.float64).reshape(-1)
    b = np.asarray(b, np.float64).reshape(-1)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))


# Relative output error allowed per runtime (others: 1e-4).  MNN's 3x3 convs
# run Winograd: 1.6e-4 on the 56x56 layer.
MNN_TOLERANCE = 2e-3


def measure(name, tfl, threads, runs, ds_python, tune_cache, settle_ms=3.0, consecutive=1,
            runtimes=RUNTIMES, mnn_python=None, tvm=None, scaling=False, instances=3):
    """Times `runtimes` (and DeepSparse, MNN and TVM, given their venvs'
    python; tvm = (python, trials, cache dir)) on
    `tfl` at `threads`, alternating round by round; `consecutive` > 1: each runtime
    runs that many times per round and only runs 2.. are timed (right after
    the same model ran).  xnnpack, the reference, and cocopie always run;
    `scaling` with threads > 1 adds cocopie at 1 thread ("cocopie_1t") to the
    rounds, so its 1 -> 2 thread speed-up is paired round by round.
    Every runtime is built `instances` times (at most `runs`; in-process ones
    as interpreters or sessions of their own, worker ones as processes of
    their own) and round r times copy r % instances of each: one copy's
    speed depends on its copy (identical XNNPACK interpreters
    in one process ran up to 1.15x apart, each consistently), and a single
    copy per runtime turned that luck into a ratio."""
    from ai_edge_litert.interpreter import Interpreter

    probe = Interpreter(model_content=tfl)
    shape = probe.get_input_details()[0]["shape"]
    del probe
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    kinds = ["xnnpack", "cocopie"] + [k for k in ("cocopie_static", "onnxruntime") if k in runtimes]
    if scaling and threads > 1:
        kinds.append("cocopie_1t")
    workers = ds_python or mnn_python or tvm
    onnx_bytes = onnx_error = None
    if "onnxruntime" in kinds:
        onnx_bytes = tflite_to_onnx(tfl)
    elif workers:
        try:  # the workers' only input; without it they are left out (below)
            onnx_bytes = tflite_to_onnx(tfl)
        except Exception as e:  # e.g. the onnx package missing
            onnx_error = f"no ONNX model ({type(e).__name__}: {e})"
    copies = max(1, min(instances, runs))
    runners = {}  # kind -> its copies
    skipped = {}
    tmp = first = None
    try:
        # The reference first: every output is checked against stock LiteRT.
        # Copy by copy, so that no runtime gets all the late allocations (a
        # copy's speed followed its place in the creation order, not its kind).
        for _ in range(copies):
            for kind in kinds:
                runners.setdefault(kind, []).append(
                    make_runner(kind, tfl, onnx_bytes, threads, x, tune_cache))
                runners[kind][-1].invoke()
        if workers and onnx_bytes is not None:
            # The ONNX copy (up to 100 MB for ResNet-50) and the workers'
            # outputs: removed with the block (finally, below).
            tmp = pathlib.Path(tempfile.mkdtemp(prefix="cocopie_peers_"))
            (tmp / "m.onnx").write_bytes(onnx_bytes)
            np.save(tmp / "x.npy", x)
            first = {"onnx": str(tmp / "m.onnx"), "input": str(tmp / "x.npy"), "threads": threads}
        # The runtimes in processes of their own.  One that fails to start,
        # or whose output disagrees, is left out of this block with the
        # reason in the row (`skipped`) instead of ending the whole run: a
        # peer that cannot run a model is a finding, not a harness error.
        specs = []
        if ds_python:
            specs.append(("deepsparse", ds_python, "deepsparse_worker.py", first,
                          {"NM_DISABLE_ANALYTICS": "True", "PYTHONPATH": ""}))
        if mnn_python:
            specs.append(("mnn", mnn_python, "mnn_worker.py", first,
                          {"OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": ""}))
        if tvm:
            tvm_python, trials, cache = tvm
            # TVM's pool threads spin-wait after a run unless told not to
            # (they took the core from the runtime after it).
            specs.append(("tvm", tvm_python, "tvm_worker.py", dict(first, trials=trials, cache=cache),
                          {"TVM_NUM_THREADS": str(threads), "TVM_THREAD_POOL_SPIN_COUNT": "0",
                           "PYTHONPATH": ""}))
        for kind, python, script, request, env in specs:
            if onnx_error:
                skipped[kind] = onnx_error
                continue
            made = []
            try:
                for _ in range(copies):
                    made.append(WorkerRunner(python, HERE / script, request, env=env))
                runners[kind] = made
            except (RuntimeError, OSError, ValueError) as e:
                for w in made:
                    w.close()
                skipped[kind] = str(e)
        ref = runners["xnnpack"][0].output
        errors = {k: max(rel(ref, r.output) for r in rs) for k, rs in runners.items()}
        bad = {k: e for k, e in errors.items()
               if not e <= (MNN_TOLERANCE if k == "mnn" else 1e-4)}
        for k in [k for k in bad if isinstance(runners[k][0], WorkerRunner)]:
            skipped[k] = f"output differs from LiteRT's by {bad.pop(k):.2e} relative"
            for w in runners.pop(k):
                w.close()
        if bad:
            raise AssertionError(f"{name}: outputs disagree with LiteRT: {bad}")
        for k, why in skipped.items():
            print(f"warning: {name}, {threads} thread(s): {k} left out: {why}", file=sys.stderr)
        times = {k: [] for k in runners}
        per_round = {k: [] for k in runners}
        for rs in runners.values():  # warm-up per block (XNNPACK needs it after others ran)
            for r in rs:
                for _ in range(8):
                    r.invoke()
        ticks = cpu_ticks()
        cross = [cross_core_ratio()]
        speed = [cpu_speed_ratio()]
        order = list(runners.items())
        # A new order every round (seeded by the block): a runtime's place in
        # the round moved its time by up to 7% (the same library read 1.08x
        # or 0.93x of itself depending on which ran second; engine.md section
        # 30), and so may the runtime before it (a pool still spinning, the
        # caches it left), so each runtime takes each place and follows each
        # other runtime equally often on average.  Rotating one fixed order
        # balanced the places but always put the same runtime before each.
        shuffle = np.random.default_rng(zlib.crc32(f"{name}/{threads}".encode()))
        for rnd in range(runs):
            for j in shuffle.permutation(len(order)):
                k, r = order[j][0], order[j][1][rnd % copies]
                timed = len(times[k])
                for i in range(consecutive):
                    # Untimed busy wait first: a runtime whose pool spins after a
                    # run (XNNPACK's) took a core from whichever runtime came
                    # next, and at 2 threads that cost VGG-16 0.3 ms whatever ran
                    # there.  Busy, not asleep: a sleeping main thread let the
                    # vCPUs idle, and every runtime's 2-thread rows got slower
                    # (docs/benchmarks.md).
                    end = time.perf_counter() + settle_ms / 1e3
                    while time.perf_counter() < end:
                        pass
                    t = time.perf_counter()
                    r.invoke()
                    ms = (time.perf_counter() - t) * 1e3
                    if consecutive == 1 or i > 0:
                        times[k].append(r.last_ms if isinstance(r, WorkerRunner) else ms)
                # This round's time (the median of its timed runs): paired
                # with the other runtimes' times of the same round (ratios.py).
                per_round[k].append(float(np.median(times[k][timed:])))
        stolen = steal_pct(ticks, cpu_ticks())
        cross.append(cross_core_ratio())
        speed.append(cpu_speed_ratio())
        versions = {}
        for k in ("deepsparse", "mnn", "tvm"):
            if k in runners:
                versions[k] = runners[k][0].reply["version"]
        if "tvm" in runners:
            versions["tvm_tuning_trials"] = runners["tvm"][0].reply["tuned_trials"]
    finally:
        for rs in runners.values():
            for r in rs:
                if isinstance(r, WorkerRunner):
                    r.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return dict(model=name, threads=threads, ms={k: dict(summary(v), n=len(v)) for k, v in times.items()},
                rounds={k: [round(v, 4) for v in t] for k, t in per_round.items()},
                rel_error=errors, skipped=skipped, versions=versions, consecutive=consecutive,
                instances=copies,
                # CPU time the hypervisor took while the block ran (VMs)
                steal_pct=None if stolen is None else round(stolen, 2),
                # reading another CPU's writes / one's own, before and after
                # the block: ~1.1 with a shared L3, ~3 across AMD CCDs
                cross_core=[None if c is None else round(c, 2) for c in cross],
                # the slower CPU's time over the faster's on a fixed chain of
                # multiply-adds, before and after the block: 1.0 when both
                # run at one speed
                cpu_speed=[None if c is None else round(c, 2) for c in speed],
                **report_summary(runners["cocopie"][0]))


def chart(rows, path, peers):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import textwrap

    labels = [textwrap.fill(r["model"], 18) + f"\n{r['threads']} thread(s)" for r in rows]
    fig, ax = plt.subplots(figsize=(max(8, 1.5 * len(rows)), 5.5))
    width = 0.8 / len(peers)
    for j, p in enumerate(peers):
        vals = [r["ms"]["xnnpack"]["median"] / r["ms"][p]["median"] if p in r["ms"] else 0
                for r in rows]
        ax.bar(np.arange(len(rows)) + (j - (len(peers) - 1) / 2) * width, vals, width, label=p)
    ax.set_yscale("log")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(rows)), labels, fontsize=7)
    ax.set_ylabel("speed-up over LiteRT + XNNPACK (log)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(rows, peers):
    head = "| model | threads | " + " | ".join(f"{p} ms" for p in peers) + \
        " | cocopie vs fastest peer | claimed | engine | steal | cross-core | cpu speed |"
    lines = [head, "|" + "---|" * (len(peers) + 8)]
    for r in rows:
        ms = r["ms"]
        cells = [f"{ms[p]['median']:.2f} ({ms[p]['q1']:.2f}-{ms[p]['q3']:.2f})" if p in ms else "-"
                 for p in peers]
        ratio = ms[fastest_peer(r)]["median"] / ms["cocopie"]["median"]
        lines.append(f"| {r['model']} | {r['threads']} | " + " | ".join(cells) +
                     f" | {ratio:.2f}x | {r['claimed']} | {', '.join(r['engines']) or '-'} | "
                     + ("-" if r.get("steal_pct") is None else f"{r['steal_pct']:.1f}%") + " | "
                     + "/".join("-" if c is None else f"{c:.1f}" for c in r.get("cross_core") or [None])
                     + " | "
                     + "/".join("-" if c is None else f"{c:.2f}" for c in r.get("cpu_speed") or [None])
                     + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=21)
    ap.add_argument("--settle-ms", type=float, default=3.0,
                    help="untimed busy wait before each timed run (lets spinning pools go idle)")
    ap.add_argument("--deepsparse", default=None, help="python of a venv with deepsparse==1.8.0")
    ap.add_argument("--mnn", default=None, help="python of a venv with MNN==3.6.1")
    ap.add_argument("--tvm", default=None, help="python of a venv with apache-tvm==0.27.0.post1")
    ap.add_argument("--tvm-trials", type=int, default=64,
                    help="MetaSchedule trials per model for TVM (0: untuned loop nests)")
    ap.add_argument("--tvm-models", nargs="*", default=["conv 56x56"],
                    help="models (name substrings) TVM is tuned and timed on")
    ap.add_argument("--tvm-cache", default=str(pathlib.Path(tempfile.gettempdir()) / "cocopie_tvm"),
                    help="where TVM's tuning databases are kept between runs")
    ap.add_argument("--resnet50", action="store_true", help="also ResNet-50 224 (slow)")
    ap.add_argument("--consecutive", type=int, default=1, metavar="K",
                    help="runs per runtime and round; K > 1 times runs 2..K (same model just ran)")
    ap.add_argument("--instances", type=int, default=3, metavar="N",
                    help="copies of every runtime, taking the rounds in turn (see measure())")
    ap.add_argument("--models", nargs="*", default=None, help="only these model names")
    ap.add_argument("--json", default=None)
    ap.add_argument("--chart", default=None)
    ap.add_argument("--out", default=None, help="write the markdown table here")
    ap.add_argument("--replot", default=None, metavar="JSON",
                    help="only redraw the table/chart from an earlier --json file")
    args = ap.parse_args()
    if args.consecutive < 1:
        ap.error("--consecutive must be at least 1")
    if args.instances < 1:
        ap.error("--instances must be at least 1")
    if args.replot:
        d = json.loads(pathlib.Path(args.replot).read_text())
        peers = [p for p in ("xnnpack", "onnxruntime", "deepsparse", "mnn", "tvm",
                             "cocopie_static", "cocopie") if p in d["rows"][0]["ms"]]
        print(table(d["rows"], peers))
        print("\n" + targets_table(d["rows"]))
        if args.chart:
            chart(d["rows"], args.chart, peers)
        return
    cases = [
        ("conv 56x56x128->128, 8 pat + 2x conn", layer_56),
        ("VGG-16 CIFAR, 8 pat + 3.6x conn", lambda: vgg16(True)),
        ("VGG-16 CIFAR, unpruned", lambda: vgg16(False)),
        ("MobileNetV2 224, unpruned", lambda: app("MobileNetV2", 224, False)),
    ]
    # Issue 11's MobileNetV2 target: 1x1 convs connectivity-pruned 3.6x and
    # depthwise 3x3 convs pattern-pruned (4 of 9 taps, 8 patterns).
    cases.append(("MobileNetV2 224, 1x1 convs 3.6x conn, depthwise 8 pat",
                  lambda: app("MobileNetV2", 224, False, prune_1x1_convs=True, prune_dw=True)))
    if args.resnet50:
        cases.insert(2, ("ResNet-50 224, 8 pat + 3.6x conn", lambda: app("ResNet50", 224, True)))
        cases.insert(3, ("ResNet-50 224, 8 pat + 3.6x conn, 1x1 convs 3.6x conn",
                         lambda: app("ResNet50", 224, True, prune_1x1_convs=True)))
    if args.models:
        cases = [c for c in cases if any(m in c[0] for m in args.models)]
    models = [(name, convert(build())) for name, build in cases]
    tune_dir = tempfile.TemporaryDirectory(prefix="cocopie_peers_tune_")
    cache = str(pathlib.Path(tune_dir.name) / "tuning.tsv")
    rows = []
    for threads in (1, 2):
        for name, tfl in models:
            row = measure(name, tfl, threads, args.runs, args.deepsparse, cache, args.settle_ms,
                          args.consecutive, mnn_python=args.mnn,
                          scaling=name.startswith(SCALING[0]), instances=args.instances,
                          tvm=(args.tvm, args.tvm_trials, args.tvm_cache)
                          if args.tvm and any(m in name for m in args.tvm_models) else None)
            rows.append(row)
            print(json.dumps(row), flush=True)
    info = machine_info()
    import onnxruntime

    info["onnxruntime"] = onnxruntime.__version__
    for r in rows:
        info.update(r["versions"])
    peers = ["xnnpack", "onnxruntime"] + (["deepsparse"] if args.deepsparse else []) + \
        (["mnn"] if args.mnn else []) + (["tvm"] if args.tvm else []) + \
        ["cocopie_static", "cocopie"]
    text = (f"Measured {datetime.date.today()}: `python bench/bench_peers.py --runs {args.runs}"
            + (" --resnet50" if args.resnet50 else "") + (" --deepsparse PY" if args.deepsparse else "")
            + (" --mnn PY" if args.mnn else "")
            + (f" --tvm PY --tvm-trials {args.tvm_trials}" if args.tvm else "")
            + (f" --consecutive {args.consecutive}" if args.consecutive > 1 else "")
            + (f" --instances {args.instances}" if args.instances != 3 else "")
            + "`\n\nMachine: " + ", ".join(f"{k} {v}" for k, v in info.items()) + "\n\n"
            + "Median ms (q1-q3) of alternating runs, same weights, outputs checked, "
            + f"{args.instances} copies of each runtime taking the rounds in turn"
            + (f"; {args.consecutive} runs in a row per runtime and round, the first untimed"
               if args.consecutive > 1 else "") + ".\n\n"
            + table(rows, peers) + "\n\n"
            + "Issue 11's targets: the median of the per-round ratios (each round ran every "
            + "runtime once, so a round's ratio saw one host speed) and its 95% interval; "
            + "`within noise` where the interval holds the goal.\n\n"
            + targets_table(rows) + "\n"
            + "".join(f"\n{k} left out of {r['model']}, {r['threads']} thread(s): {why}\n"
                      for r in rows for k, why in r.get("skipped", {}).items()))
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(dict(machine=info, rows=rows), indent=1))
    if args.chart:
        chart(rows, args.chart, peers)


if __name__ == "__main__":
    main()
