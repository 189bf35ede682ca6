"""Ablation of the pattern engine on one layer (3x3 conv 56x56x128->128,
8 patterns + 2x connectivity), each optimisation switched off in turn,
timed side by side with XNNPACK's dense convolution of the same weights.

    python bench/bench_ablation.py [--runs 15] [--threads 1] [--out docs/ablation.md]

Rows, generated engine (per-layer code, where the CPU and build have a
generator): auto-tuned register tile; the default tile; no filter blocking
by shared columns; small tiles of 4 and 1 filters (less or no sharing of an
input load across filters); the AVX2 generator next to AVX-512.  Static
kernels: auto-tuned knobs; default knobs; no cache blocking over input
channels; a one-vector register tile; no load-redundancy elimination across
filters (4-filter shared masks, every filter run as its own unit); no filter
kernel reorder.  And no pattern kernel at all (the delegate's dense direct
kernel on the same zero-filled weights: neither compact storage nor skipped
MACs).  All configurations run in one process, alternating, medians
and quartiles; every output is checked against XNNPACK's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from bench_delegate import convert, one_conv  # noqa: E402
from timing import alternate, machine_info, summary  # noqa: E402


class _Layer:
    """Invoke-style wrapper around _cc.PatternConvLayer."""

    def __init__(self, layer, x):
        self.layer, self.x, self.out = layer, x, None

    def invoke(self):
        self.out = self.layer(self.x)


def _tflite_runner(tfl, threads, x, **options):
    from ai_edge_litert.interpreter import Interpreter

    from cocopie_tf import lite

    it = (lite.Interpreter(model_content=tfl, num_threads=threads, **options) if options
          else Interpreter(model_content=tfl, num_threads=threads))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)

    class R:
        def invoke(self):
            it.invoke()

        @property
        def out(self):
            return it.get_tensor(it.get_output_details()[0]["index"])

    return R()


def run(group, threads, runs):
    from cocopie_tf import _cc

    model = one_conv(group)
    tfl = convert(model)
    w, b = model.layers[1].get_weights()
    f = np.ascontiguousarray(w.transpose(3, 0, 1, 2))
    x = np.random.default_rng(0).uniform(-1, 1, (1, 56, 56, 128)).astype(np.float32)

    def layer(**kw):
        return _cc.PatternConvLayer(f, bias=b, num_threads=threads, **kw)

    isas = [i for i in ("avx512", "avx2_fma") if i in _cc.jit_choices()]
    configs = [("XNNPACK dense (LiteRT)", _tflite_runner(tfl, threads, x))]
    if isas:  # the generated engine (CoCo-Gen), each optimisation off in turn
        tuned = layer()
        picked = tuned.tune(x, budget_ms=600)
        tuned(x)
        e = tuned.engine
        isa = isas[0]
        m_default = 28 if isa == "avx512" else 14
        configs += [
            (f"generated, auto-tuned ({e['engine']}, M {e.get('jit_filters', '-')} x "
             f"V {e.get('jit_vectors', '-')})", _Layer(tuned, x)),
            (f"generated {isa}, default tile (M {m_default} x V 1)",
             _Layer(layer(jit=isa), x)),
            ("generated, no row bands (the whole image packed, run, stored at once)",
             _Layer(layer(jit=isa, jit_band_rows=-1), x)),
            ("generated, no code segments (a block's code in one piece)",
             _Layer(layer(jit=isa, jit_segment=-1), x)),
            ("generated, one output row per call (code refetched every row)",
             _Layer(layer(jit=isa, jit_task_positions=1), x)),
            ("generated, neither (the engine before code segments)",
             _Layer(layer(jit=isa, jit_segment=-1, jit_task_positions=1), x)),
            ("generated, no filter blocking by shared columns",
             _Layer(layer(jit=isa, jit_reorder=False), x)),
            ("generated, 4-filter tile (little load sharing across filters)",
             _Layer(layer(jit=isa, jit_filters=4), x)),
            ("generated, 1-filter tile (no load sharing across filters)",
             _Layer(layer(jit=isa, jit_filters=1), x)),
        ]
        if "avx2_fma" in isas and isa != "avx2_fma":
            configs.append(("generated avx2_fma (8 lanes, M 14 x V 1)",
                            _Layer(layer(jit="avx2_fma"), x)))
    stuned = layer(jit="static")
    spicked = stuned.tune(x, budget_ms=600)
    configs += [
        ("static kernels, knobs auto-tuned "
         f"(chunk {spicked['chunk_channels'] or 'auto'}, tile {spicked['tile_vectors'] or 'auto'})",
         _Layer(stuned, x)),
        ("static kernels, default knobs", _Layer(layer(jit="static"), x)),
        ("static, no cache blocking over input channels",
         _Layer(layer(jit="static", chunk_channels=128), x)),
        ("static, 1-vector register tile", _Layer(layer(jit="static", tile_vectors=1), x)),
        ("static, no filter kernel reorder", _Layer(layer(jit="static", reorder=False), x)),
        ("dense direct kernel on the pruned weights (no pattern kernel)",
         _tflite_runner(tfl, threads, x, claim="all", pattern_kernels="off")),
    ]
    if group > 1:
        configs.insert(len(configs) - 1,
                       ("static, no load-redundancy elimination across filters (units of 1)",
                        _Layer(layer(jit="static", group=1), x)))
    runners = [r for _, r in configs]
    for r in runners:
        r.invoke()
    ref = np.asarray(runners[0].out, np.float64)
    for (name, r) in configs[1:]:
        err = np.linalg.norm(np.asarray(r.out, np.float64) - ref) / np.linalg.norm(ref)
        assert err < 1e-5, (name, err)
    times = alternate(runners, runs=runs, warmup=3)
    base = summary(times[0])["median"]
    return [dict(config=name, ms=summary(t), vs_xnnpack=base / summary(t)["median"])
            for (name, _), t in zip(configs, times)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    lines = [f"Measured {datetime.date.today()} with `python bench/bench_ablation.py --runs "
             f"{args.runs} --threads {args.threads}`.", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in machine_info().items()), ""]
    for group, title in ((1, "every filter its own masks"), (4, "4-filter shared masks")):
        rows = run(group, args.threads, args.runs)
        print(json.dumps(rows), flush=True)
        lines += [f"**3x3 conv 56x56x128->128, 8 patterns + 2x connectivity, {title}** "
                  f"({args.threads} thread(s))", "",
                  "| configuration | ms (q1-q3) | speed-up over XNNPACK |", "|---|---|---|"]
        for r in rows:
            m = r["ms"]
            lines.append(f"| {r['config']} | {m['median']:.2f} ({m['q1']:.2f}-{m['q3']:.2f}) "
                         f"| {r['vs_xnnpack']:.2f}x |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
