"""``cocopie-tf bench`` and ``cocopie-tf tune-kernels``: any .tflite model,
stock LiteRT (XNNPACK) vs LiteRT + the cocopie delegate on the same file.

Latency is measured side by side in one process, alternating A B A B so
drift and noise on a shared machine hit both alike; medians and quartiles
are reported, plus the delegate's per-node times (profile=true) and the
relative error of its outputs against the stock interpreter's."""

from __future__ import annotations

import json
import os
import pathlib
import platform

import numpy as np

from cocopie_tf._timing import alternate, summary


def parse_threads(text: str) -> list[int]:
    try:
        threads = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--threads: expected a comma-separated list of integers, got {text!r}")
    if not threads or any(t < 1 or t > 256 for t in threads):
        raise ValueError(f"--threads: each value must be between 1 and 256, got {text!r}")
    return threads


def parse_options(pairs: list[str]) -> dict[str, str]:
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option: expected KEY=VALUE, got {pair!r}")
        if key == "num_threads":
            raise ValueError("--option num_threads: use --threads")
        options[key] = value
    return options


def _read_model(path: str) -> bytes:
    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"model file not found: {p}")
    return p.read_bytes()


def _feed(interp, seed: int = 0) -> list[np.ndarray]:
    interp.allocate_tensors()
    rng = np.random.default_rng(seed)
    inputs = []
    for d in interp.get_input_details():
        if d["dtype"] != np.float32:
            raise ValueError(f"input {d['name']!r} is {np.dtype(d['dtype']).name}; "
                             "bench feeds random float32 inputs only")
        x = rng.uniform(-1, 1, d["shape"]).astype(np.float32)
        interp.set_tensor(d["index"], x)
        inputs.append(x)
    return inputs


def _outputs(interp) -> list[np.ndarray]:
    return [interp.get_tensor(d["index"]).copy() for d in interp.get_output_details()]


def _rel_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def machine() -> dict:
    from cocopie_tf import _cc

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        from importlib.metadata import version

        litert = version("ai-edge-litert")
    except Exception:  # pragma: no cover - metadata missing
        litert = "unknown"
    return {"cpu": cpu, "cores": os.cpu_count(), "features": _cc.cpu_features(),
            "kernel_set": _cc.default_kernel_set(),
            "jit_isas": [i for i in _cc.jit_choices() if i not in ("auto", "static")],
            "python": platform.python_version(),
            "ai_edge_litert": litert}


def bench(model: str, threads: list[int], runs: int = 15, warmup: int = 8,
          options: dict | None = None, backend: str = "cpu") -> dict:
    """Runs the comparison; returns a JSON-able dict (see ``format_bench``)."""
    from ai_edge_litert.interpreter import Interpreter as Stock

    from cocopie_tf import lite

    if runs < 3 or warmup < 0:
        raise ValueError("runs must be >= 3 and warmup >= 0")
    content = _read_model(model)
    opts = dict(options or {})
    rows = []
    for t in threads:
        stock = Stock(model_content=content, num_threads=t)
        ours = lite.Interpreter(model_content=content, num_threads=t, profile=True,
                                backend=backend, **opts)
        x = _feed(stock)
        for it, xi in zip([ours], [x]):
            it.allocate_tensors()
            for d, v in zip(it.get_input_details(), xi):
                it.set_tensor(d["index"], v)
        ms_stock, ms_ours = alternate([stock, ours], runs=runs, warmup=warmup)
        err = max((_rel_error(a, b) for a, b in zip(_outputs(ours), _outputs(stock))), default=0.0)
        nodes = ours.delegate_report()
        s, o = summary(ms_stock), summary(ms_ours)
        rows.append({"threads": t, "xnnpack_ms": s, "cocopie_ms": o,
                     "speedup": s["median"] / o["median"], "rel_error": err,
                     "claimed": len(nodes), "nodes": nodes,
                     "xnnpack_runs": ms_stock, "cocopie_runs": ms_ours})
    return {"model": str(model), "runs": runs, "warmup": warmup, "options": opts,
            "backend": backend, "machine": machine(), "rows": rows}


def format_bench(result: dict) -> str:
    m = result["machine"]
    lines = [f"model: {result['model']}",
             f"machine: {m['cpu']}, {m['cores']} cores, {m['features']}, static kernels "
             f"{m['kernel_set']}, code generator {'/'.join(m.get('jit_isas') or []) or 'none'}, "
             f"ai_edge_litert {m['ai_edge_litert']}",
             f"{result['runs']} timed runs each after {result['warmup']} warm-up, alternating "
             "XNNPACK / cocopie; medians (q1-q3)"]
    gpu = result.get("backend") == "gpu"
    devices = {e.get("gpu_device", "") for r in result["rows"] for e in r["nodes"]} - {""}
    if gpu:
        lines.append("cocopie backend: gpu on " + (", ".join(sorted(devices)) or "?") +
                     "; per-node ms are device times from OpenCL profiling events (on PoCL, "
                     "OpenCL on the CPU, these are correctness runs, not GPU speed)")
    lines += ["",
             "threads  XNNPACK ms            cocopie ms            speed-up  claimed  rel.error"]
    for r in result["rows"]:
        s, o = r["xnnpack_ms"], r["cocopie_ms"]
        # With nothing claimed both runs execute the same kernels: a ratio
        # would only measure noise.
        speedup = f"{r['speedup']:7.2f}x" if r["claimed"] else "    n/a "
        lines.append(f"{r['threads']:>7}  {s['median']:7.3f} ({s['q1']:.3f}-{s['q3']:.3f})  "
                     f"{o['median']:7.3f} ({o['q1']:.3f}-{o['q3']:.3f})  {speedup}  "
                     f"{r['claimed']:>7}  {r['rel_error']:.1e}")
    for r in result["rows"]:
        if not r["nodes"]:
            continue
        what = "device ms" if gpu else "ms"
        lines += ["", f"claimed nodes at {r['threads']} thread(s) (mean {what} per invoke, "
                      "including warm-up runs):",
                  "  node  op         kernel                          MAC red.  patterns  tuning     ms"]
        for e in r["nodes"]:
            # ADD has no multiply-accumulates to reduce.
            red = (f"{e['dense_macs'] / max(e['executed_macs'], 1):7.2f}x" if e["dense_macs"]
                   else "       -")
            tuning = e.get("tuning", "-")
            lines.append(f"  {e['node_index']:>4}  {e['op']:<10} {e['kernel']:<31} {red}  "
                         f"{e['patterns']:>8}  {tuning:<8} {e.get('mean_ms', 0):7.3f}")
    if not any(r["claimed"] for r in result["rows"]):
        lines += ["", "0 nodes claimed: both runs execute the same kernels, so there is no "
                      "speed-up to report. With claim=auto the delegate takes only pattern-pruned "
                      "convolutions it predicts faster than XNNPACK (see cocopie-tf inspect)"]
    return "\n".join(lines)


def tune_kernels(model: str, threads: list[int], cache: str | None = None,
                 budget_ms: float = 400.0) -> list[dict]:
    """Tunes every claimed pattern convolution for each thread count and
    stores the results in the tuning cache; returns the per-node reports."""
    from cocopie_tf import lite

    content = _read_model(model)
    out = []
    for t in threads:
        opts = {"tune": "on", "tune_budget_ms": budget_ms}
        if cache:
            opts["tune_cache"] = cache
        it = lite.Interpreter(model_content=content, num_threads=t, **opts)
        it.allocate_tensors()
        out.append({"threads": t, "nodes": [e for e in it.delegate_report() if "tuning" in e]})
    return out


def format_tune(result: list[dict], cache: str) -> str:
    lines = [f"tuning cache: {cache}"]
    for r in result:
        lines.append(f"threads {r['threads']}: {len(r['nodes'])} pattern convolution(s)")
        for e in r["nodes"]:
            lines.append(f"  node {e['node_index']:>4}: {e['tuning']:<7} chunk_channels="
                         f"{e['chunk_channels']} tile_vectors={e['tile_vectors']}")
    if not any(r["nodes"] for r in result):
        lines.append("no pattern convolution was claimed: nothing to tune")
    return "\n".join(lines)


def default_cache_path() -> str:
    from cocopie_tf import _cc

    return _cc.default_tuning_cache_path()  # the delegate's own rule, not a copy of it


def write_json(result, path: str) -> None:
    from cocopie_tf._files import write_file

    write_file(path, json.dumps(result, indent=1).encode(), replace=False)
