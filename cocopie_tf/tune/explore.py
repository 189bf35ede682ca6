"""Teacher-student pre-training of tuning blocks, assembly of candidates, and
the search itself (objective order, early stop, sharding, resume)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import pathlib
import time
from dataclasses import dataclass, field

import keras
import numpy as np

from cocopie_tf.tune import graph as G
from cocopie_tf.tune.blocks import Block, Candidate, overlap_groups, select_blocks

FORMAT = 1


# ---------------------------------------------------------------------------
# files

def _write_atomic(path, data: bytes):
    from cocopie_tf._files import write_file

    write_file(path, data, replace=True)  # the search's own files, rewritten as it goes


def _write_json(path, obj):
    _write_atomic(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def _write_npz(path, arrays: dict):
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    _write_atomic(path, buf.getvalue())


def _read_npz(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


# ---------------------------------------------------------------------------
# the model seen as modules

class _Model:
    """The dense model, its modules and cached per-module pruning plans."""

    def __init__(self, model, modules=None):
        self.g = G.ModelGraph(model)
        self.modules = G.find_modules(model, modules, graph=self.g)
        self.weights = G.dense_weights(self.g)
        self._plans = {}

    def check(self, candidate):
        if not isinstance(candidate, Candidate):
            raise ValueError(f"candidates must be Candidate objects, got {candidate!r}")
        if len(candidate.rates) != len(self.modules):
            raise ValueError(f"candidate {candidate} has {len(candidate.rates)} rates but the "
                             f"model has {len(self.modules)} modules: "
                             f"{[m.name for m in self.modules]}")
        if candidate.method == "filter":
            for m in self.modules:
                if not m.prunable:
                    raise ValueError(f"module {m.index} ({m.name}) has no conv whose filters can "
                                     "be removed; use method='pattern' or other modules")

    def plan(self, i, rate, method):
        key = (i, rate, method)
        if key not in self._plans:
            self._plans[key] = G.module_plan(self.g, self.modules[i], rate, method, self.weights)
        return self._plans[key]

    def candidate_plan(self, candidate, pretrained=None, use=()):
        """Per-layer plan of a candidate; layers of the blocks in ``use`` take
        the pre-trained weights."""
        plan = {}
        for i, r in enumerate(candidate.rates):
            plan.update(self.plan(i, r, candidate.method))
        for block in use:
            for name, w in pretrained[block].weights.items():
                p = plan.get(name)
                plan[name] = G.LayerPlan(list(w), p.filters if p else None, p.mask if p else None)
        return plan

    def size(self, candidate):
        return G.plan_size(self.g, self.candidate_plan(candidate))

    def dense_size(self):
        return G.plan_size(self.g, {})

    def block_span(self, block):
        lo = self.g.span(self.modules[block.start])[0]
        hi = self.g.span(self.modules[block.stop - 1])[1]
        return lo, hi

    def build(self, candidate, pretrained=None, use=(), masks=True):
        plan = self.candidate_plan(candidate, pretrained, use)
        return G.instantiate(self.g, 0, len(self.g.steps) - 1, plan, self.weights, masks=masks)

    def boundary_activations(self, x, ids, batch_size=256):
        """The dense model's activations at tensors ``ids`` (teacher signals)."""
        model = G.instantiate(self.g, 0, len(self.g.steps) - 1, {}, self.weights, outputs=ids)
        out = model.predict(x, batch_size=batch_size, verbose=0)
        out = out if isinstance(out, (list, tuple)) else [out]
        return dict(zip(ids, out))

    def digest(self):
        h = hashlib.sha256()
        for name in sorted(self.weights):
            for a in self.weights[name]:
                h.update(name.encode())
                h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()


def _as_candidates(candidates):
    out = list(candidates)
    if not out:
        raise ValueError("candidates must not be empty")
    return [c if isinstance(c, Candidate) else Candidate(*c) if isinstance(c, tuple)
            and len(c) == 2 and isinstance(c[1], str) else Candidate(c) for c in out]


# ---------------------------------------------------------------------------
# pre-training

@dataclass
class PretrainedBlock:
    """A block's weights ({layer name: arrays}) and its teacher-student mean
    squared error before and after pre-training, and per epoch (the whole
    group's summed loss)."""

    weights: dict
    mse_before: float
    mse_after: float
    history: list = field(default_factory=list)
    seconds: float = 0.0


def _scope(strategy):
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def _mse(a, b):
    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def _pretrain_group(tm, blocks, acts, epochs, batch_size, learning_rate, strategy, seed, verbose):
    t0 = time.perf_counter()
    keras.utils.set_random_seed(seed)
    with _scope(strategy):
        students, xs, ys = [], [], []
        for j, b in enumerate(blocks):
            lo, hi = tm.block_span(b)
            plan = {}
            for i, r in zip(range(b.start, b.stop), b.rates):
                plan.update(tm.plan(i, r, b.method))
            student = G.instantiate(tm.g, lo, hi, plan, tm.weights, prefix=f"b{j}_")
            for layer in student.layers:
                # Batch statistics of a block's input differ from the dense
                # model's running ones the block starts from; frozen, its
                # normalisation stays the teacher's (per kept channel).
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.trainable = False
            inp_id, out_id = tm.g.io(lo, hi)
            students.append(student)
            xs.append(acts[inp_id])
            ys.append(acts[out_id])
        inputs = [s.inputs[0] for s in students]
        combined = keras.Model(inputs, [s.outputs[0] for s in students])
        combined.compile(optimizer=keras.optimizers.Adam(learning_rate),
                         loss=["mse"] * len(students), jit_compile=False)
    before = [_mse(_predict(s, x), y) for s, x, y in zip(students, xs, ys)]
    hist = combined.fit(xs, ys, epochs=epochs, batch_size=batch_size, shuffle=True,
                        verbose=verbose)
    after = [_mse(_predict(s, x), y) for s, x, y in zip(students, xs, ys)]
    seconds = time.perf_counter() - t0
    out = {}
    for j, (b, s) in enumerate(zip(blocks, students)):
        prefix = f"b{j}_"
        weights = {layer.name[len(prefix):]: [np.asarray(a) for a in layer.get_weights()]
                   for layer in s.layers if not isinstance(layer, keras.layers.InputLayer)}
        out[b] = PretrainedBlock(weights, before[j], after[j],
                                 [float(v) for v in hist.history["loss"]], seconds)
    return out


def pretrain_blocks(model, blocks, x, *, modules=None, epochs: int = 3, batch_size: int = 64,
                    learning_rate: float = 1e-3, strategy=None, seed: int = 0,
                    verbose: int = 0) -> dict:
    """Teacher-student pre-training of tuning blocks.

    Each block (modules ``start..stop-1`` pruned at its rates, initialised
    from the dense weights: filter pruning keeps the filters with the largest
    L1 norms) reads the dense model's activation at the block's input and
    learns to reproduce the dense activation at its output (mean squared
    error on inputs ``x``); only the block's own weights exist in the model
    being trained. Blocks that share no module train together in one model.
    ``strategy``: a ``tf.distribute`` strategy to build and train under.

    Returns ``{Block: PretrainedBlock}``; ``model`` itself is not changed.
    """
    tm = model if isinstance(model, _Model) else _Model(model, modules)
    blocks = list(blocks)
    for b in blocks:
        if not isinstance(b, Block):
            raise ValueError(f"blocks must be Block objects, got {b!r}")
        if b.start < 0 or b.stop > len(tm.modules):
            raise ValueError(f"blocks: block {b.key} covers modules {b.start}..{b.stop - 1} but "
                             f"the model has {len(tm.modules)} modules")
        for m in tm.modules[b.start:b.stop]:
            if b.method == "filter" and not m.prunable:
                raise ValueError(f"blocks: module {m.index} ({m.name}) of block {b.key} has no "
                                 "conv whose filters can be removed")
    _check_int(epochs, "epochs")
    _check_int(batch_size, "batch_size")
    x = np.asarray(x)
    ids = sorted({t for b in blocks for t in tm.g.io(*tm.block_span(b))})
    acts = tm.boundary_activations(x, ids)
    out = {}
    for gi, grp in enumerate(overlap_groups(blocks)):
        out.update(_pretrain_group(tm, [blocks[i] for i in grp], acts, epochs, batch_size,
                                   learning_rate, strategy, seed + gi, verbose))
    return out


def assemble(model, candidate, pretrained=None, *, modules=None, use=None, masks=False):
    """The candidate network: its modules pruned per ``candidate``, with the
    weights of the pre-trained blocks (``{Block: PretrainedBlock}``) it is
    assembled from and the dense model's (pruned) weights elsewhere.

    ``use``: the blocks to take (default: left to right, the longest block of
    ``pretrained`` matching the candidate at each module). ``masks=True``
    keeps pattern-pruned zeros fixed while training the result.
    """
    tm = model if isinstance(model, _Model) else _Model(model, modules)
    candidate = _as_candidates([candidate])[0]
    tm.check(candidate)
    pretrained = pretrained or {}
    if use is None:
        use, i = [], 0
        while i < len(candidate.rates):
            fits = [b for b in pretrained if b.start == i and b.method == candidate.method
                    and b.rates == candidate.rates[b.start:b.stop]]
            if fits:
                best = max(fits, key=lambda b: len(b.rates))
                use.append(best)
                i = best.stop
            else:
                i += 1
    for b in use:
        if b not in pretrained:
            raise ValueError(f"use: block {b.key} is not in pretrained")
        if b.method != candidate.method or b.rates != candidate.rates[b.start:b.stop]:
            raise ValueError(f"use: block {b.key} does not match candidate {candidate}")
    return tm.build(candidate, pretrained, use, masks=masks)


# ---------------------------------------------------------------------------
# fine-tuning and evaluation

def _predict(model, x, batch_size=256):
    # Eager calls: a new network per candidate would retrace predict() each time.
    return np.concatenate([keras.ops.convert_to_numpy(model(x[i:i + batch_size], training=False))
                           for i in range(0, len(x), batch_size)])


def _accuracy(y, logits):
    return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(y).reshape(-1)))


def _psnr(y, pred):
    """Peak signal-to-noise ratio in dB of images in [0, 1] (float64)."""
    err = np.mean((np.asarray(pred, np.float64) - np.asarray(y, np.float64)) ** 2)
    return float("inf") if err == 0 else float(10.0 * np.log10(1.0 / err))


METRICS = {"accuracy": _accuracy, "psnr": _psnr}


def _metric(metric):
    """(name, fn(y_true, y_pred) -> float, higher is better) of ``metric``."""
    if callable(metric):
        return getattr(metric, "__name__", "metric"), metric
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)} or a callable "
                         f"f(y_true, y_pred) -> float, got {metric!r}")
    return metric, METRICS[metric]


def format_score(value, metric="accuracy"):
    if metric == "accuracy":
        return f"{value:.2%}"
    if metric == "psnr":
        return f"{value:.2f} dB"
    return f"{value:.4g}"


def _score(model, x, y, fn):
    return float(fn(y, _predict(model, x)))


class _Eval(keras.callbacks.Callback):
    def __init__(self, xv, yv, target, every, trace, fn):
        super().__init__()
        self.xv, self.yv, self.target, self.every, self.trace = xv, yv, target, every, trace
        self.fn = fn

    def on_epoch_end(self, epoch, logs=None):
        score = _score(self.model, self.xv, self.yv, self.fn)
        self.trace.append(((epoch + 1) * self.every, score))
        if score >= self.target:
            self.model.stop_training = True


def _finetune(model, data, *, steps, eval_every, target, batch_size, learning_rate, seed,
              strategy, loss, fn=_accuracy):
    """Fine-tunes for at most ``steps`` steps, evaluating the validation score
    ``fn`` before and every ``eval_every`` steps and stopping once it reaches
    ``target``. Returns [(steps done, score), ...]."""
    import tensorflow as tf

    xt, yt, xv, yv = data
    trace = [(0, _score(model, xv, yv, fn))]
    if trace[0][1] >= target or steps == 0:
        return trace
    if strategy is None:
        return _finetune_loop(model, data, trace, steps=steps, eval_every=eval_every,
                              target=target, batch_size=batch_size,
                              learning_rate=learning_rate, seed=seed, loss=loss, fn=fn)
    with _scope(strategy):
        model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, jit_compile=False)
    ds = (tf.data.Dataset.from_tensor_slices((xt, yt)).shuffle(len(xt), seed=seed)
          .repeat().batch(batch_size))
    model.fit(ds, epochs=steps // eval_every, steps_per_epoch=eval_every, verbose=0, shuffle=False,
              callbacks=[_Eval(xv, yv, target, eval_every, trace, fn)])
    return trace


def _finetune_loop(model, data, trace, *, steps, eval_every, target, batch_size, learning_rate,
                   seed, loss, fn):
    """The same schedule as ``model.fit`` without its per-model machinery: one
    traced training step (a single batch shape, so a single trace), batches
    drawn from consecutive shuffled passes over the training data. A search
    builds a new network per candidate, so fit's set-up (compiling, data
    adapters, callbacks, its train function) would be paid per candidate."""
    import tensorflow as tf

    xt, yt, xv, yv = data
    opt = keras.optimizers.Adam(learning_rate)
    tv = model.trainable_variables

    @tf.function(jit_compile=False)
    def step(x, y):
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=True))
            if model.losses:
                value = value + tf.add_n(model.losses)
        opt.apply(tape.gradient(value, tv), tv)

    rng = np.random.default_rng(seed)
    b = min(batch_size, len(xt))
    stream, pos = np.empty(0, np.int64), 0
    for k in range(steps // eval_every):
        for _ in range(eval_every):
            if pos + b > len(stream):
                stream = np.concatenate([stream[pos:], rng.permutation(len(xt))])
                pos = 0
            idx = np.sort(stream[pos:pos + b])
            pos += b
            step(xt[idx], yt[idx])
        score = _score(model, xv, yv, fn)
        trace.append(((k + 1) * eval_every, score))
        if score >= target:
            break
    return trace


def _check_int(v, name, low=1):
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")


def _is_chief(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type in ("chief", None) or (
        resolver.task_type == "worker" and resolver.task_id == 0)


# ---------------------------------------------------------------------------
# the search

@dataclass
class SearchResult:
    """The outcome of :func:`search` as seen in its directory.

    ``chosen``: the smallest candidate meeting the objective, or (``met``
    False) the best-scoring one found; ``results``: every evaluated
    candidate (dicts, in objective order; ``score`` is its validation
    ``metric``); ``complete``: every candidate
    ranked before the chosen one (all, when none met the objective) has
    been evaluated, so the answer is final; ``message``: a one-line summary.
    """

    chosen: dict | None
    met: bool
    complete: bool
    results: list
    target: float
    dense_size: int
    pretrain_seconds: float
    finetune_seconds: float
    trained: int
    total: int
    message: str
    directory: pathlib.Path
    metric: str = "accuracy"
    _tm: object = field(repr=False, default=None)

    def fmt(self, value) -> str:
        return format_score(value, self.metric)

    def table(self) -> str:
        head = (f"{'rank':>4} {'candidate':<34} {'params':>9} {'smaller':>7} "
                f"{self.metric[:10]:>10} {'steps':>5} {'met':>3}")
        rows = [head, "-" * len(head)]
        for r in self.results:
            mark = "*" if self.chosen and r["index"] == self.chosen["index"] else " "
            rows.append(f"{r['rank']:>4} {r['candidate']:<34.34} {r['size']:>9,} "
                        f"{self.dense_size / r['size']:>6.2f}x {self.fmt(r['score']):>10} "
                        f"{r['steps']:>5} {'yes' if r['met'] else 'no':>3}{mark}")
        rows.append(f"(* chosen; objective: smallest model with {self.metric} >= "
                    f"{self.fmt(self.target)}; dense model {self.dense_size:,} parameters)")
        return "\n".join(rows)

    def plot(self, path=None):
        """Accuracy vs size of every evaluated candidate, the chosen one marked;
        saved to ``path`` (PNG, written atomically) when given."""
        # A Figure without pyplot: no backend switch, so a notebook's inline
        # display keeps working.
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        ok = [r for r in self.results if r["met"]]
        no = [r for r in self.results if not r["met"]]
        ax.scatter([r["size"] for r in no], [r["score"] for r in no], s=14, c="tab:gray",
                   label="below target")
        ax.scatter([r["size"] for r in ok], [r["score"] for r in ok], s=14, c="tab:blue",
                   label="meets target")
        if self.chosen:
            ax.scatter([self.chosen["size"]], [self.chosen["score"]], s=120,
                       facecolors="none", edgecolors="tab:red", linewidths=2, label="chosen")
        ax.axhline(self.target, color="tab:red", ls=":", lw=1, label="target")
        ax.set_xlabel("parameters")
        ax.set_ylabel(f"validation {self.metric}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        if path is not None:
            import io

            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=120)
            _write_atomic(path, buf.getvalue())
        return fig

    def model(self):
        """The chosen candidate as a plain Keras model with its fine-tuned
        weights (None when nothing was evaluated)."""
        if not self.chosen:
            return None
        if self._tm is None:
            raise ValueError("this result was collected without the model; call search() again "
                             "(it resumes) to rebuild the chosen network")
        path = self.directory / "results" / f"{self.chosen['index']:05d}.npz"
        if not path.exists():
            raise ValueError(f"the weights of the chosen candidate are missing: {path}")
        z = _read_npz(path)
        cand = Candidate(tuple(self.chosen["rates"]), self.chosen["method"])
        model = self._tm.build(cand, masks=False)
        for layer in model.layers:
            n = sum(1 for k in z if k.startswith(layer.name + "|"))
            if n:
                layer.set_weights([z[f"{layer.name}|{i}"] for i in range(n)])
        return model


def _fingerprint(tm, candidates, settings, data):
    h = hashlib.sha256()
    for a in data:
        h.update(np.ascontiguousarray(a).tobytes())
    return {
        "format": FORMAT,
        "modules": [list(m.layers) for m in tm.modules],
        "candidates": [[list(c.rates), c.method] for c in candidates],
        "settings": settings,
        "dense_size": tm.dense_size(),
        "dense_weights_sha256": tm.digest(),
        "data_sha256": h.hexdigest(),
    }


def _open_directory(directory, manifest):
    from cocopie_tf._files import write_file

    d = pathlib.Path(directory)
    path = d / "manifest.json"
    if d.exists() and not d.is_dir():
        raise ValueError(f"directory: {d} exists and is not a directory")
    # The workers of a sharded search start together on one directory: what
    # a starting search creates (its manifest, being written, and blocks/,
    # results/) is not someone else's data.
    def foreign(name):
        return name not in ("manifest.json", "blocks", "results") and \
            not name.startswith(".manifest.json.")

    if d.is_dir() and not path.exists() and any(foreign(p.name) for p in d.iterdir()):
        raise ValueError(f"directory: {d} is not empty and holds no CoCo-Tune search "
                         "(manifest.json); give a new or empty directory")
    d.mkdir(parents=True, exist_ok=True)
    # The first worker's manifest stands (an exclusive create); the others
    # check theirs against it.
    data = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    with contextlib.suppress(FileExistsError):
        write_file(path, data, replace=False)
    old = json.loads(path.read_text())
    if old != manifest:
        diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
        raise ValueError(f"directory: {d} holds a different search (differs in {diff}); "
                         "use a new directory to start another")
    (d / "blocks").mkdir(exist_ok=True)
    (d / "results").mkdir(exist_ok=True)
    return d


def _read_results(d):
    out = []
    for p in sorted((d / "results").glob("*.json")):
        with contextlib.suppress(ValueError, OSError):  # a file being replaced right now
            out.append(json.loads(p.read_text()))
    return out


def _load_group(path, blocks):
    z = _read_npz(path.with_suffix(".npz"))
    meta = json.loads(path.with_suffix(".json").read_text())
    out = {}
    for b in blocks:
        m = meta[b.key]
        weights = {}
        for k in z:
            key, name, i = k.split("|")
            if key == b.key:
                weights.setdefault(name, {})[int(i)] = z[k]
        weights = {n: [w[i] for i in range(len(w))] for n, w in weights.items()}
        out[b] = PretrainedBlock(weights, m["mse_before"], m["mse_after"], m["history"],
                                 m["seconds"])
    return out


def _save_group(path, got):
    _write_npz(path.with_suffix(".npz"),
               {f"{b.key}|{n}|{i}": a for b, p in got.items()
                for n, w in p.weights.items() for i, a in enumerate(w)})
    # The .json marks the group complete, so it goes last.
    _write_json(path.with_suffix(".json"),
                {b.key: dict(mse_before=p.mse_before, mse_after=p.mse_after,
                             history=p.history, seconds=p.seconds) for b, p in got.items()})


def _choose(results, target):
    met = [r for r in results if r["met"]]
    if met:
        return min(met, key=lambda r: r["rank"]), True
    if results:
        return max(results, key=lambda r: (r["score"], -r["size"])), False
    return None, False


def search(model, x_train, y_train, x_val, y_val, *, candidates, target: float, directory,
           modules=None, finetune_steps: int = 100, eval_every: int = 20,
           pretrain_epochs: int = 3, batch_size: int = 64, learning_rate: float = 1e-3,
           use_blocks: bool = True, single_modules: bool = True, pretrain: str = "all",
           explore: str = "first", strategy=None,
           worker: int = 0, num_workers: int = 1, limit: int | None = None, callback=None,
           progress: bool = True, seed: int = 0, wait_timeout: float = 3600.0,
           loss=None, metric="accuracy") -> SearchResult:
    """CoCo-Tune: the smallest candidate with validation ``metric`` >= ``target``.

    Candidates are explored smallest first (size: parameters, non-zero ones
    for pattern pruning). With ``use_blocks`` (CoCo-Tune) the tuning blocks
    chosen by :func:`select_blocks` are pre-trained first and each candidate
    is assembled from them; without it (the baseline) every candidate starts
    from the dense model's pruned weights. Each candidate is then fine-tuned
    for at most ``finetune_steps`` steps, evaluated every ``eval_every``
    steps (and before training) and stops once it meets ``target``; the
    search stops at the first candidate that does. ``pretrain='all'`` (Wootz)
    pre-trains every block before exploring; ``'on_demand'`` pre-trains a
    block when the first candidate that uses it is reached (together with
    that candidate's other new blocks), so an early stop skips the rest.
    ``explore='all'`` evaluates every candidate instead of stopping at the
    first that meets the objective (the answer is the same; the report then
    also holds the whole accuracy-vs-size curve).

    Everything is kept in ``directory`` (a new or empty directory, or one of
    an earlier run of the same search, which then resumes): pre-trained
    blocks and one result file per candidate, written atomically. Worker
    ``worker`` of ``num_workers`` (processes sharing ``directory``, e.g. a
    job array) pre-trains block groups g with g % num_workers == worker,
    waits up to ``wait_timeout`` s for the others' blocks, and evaluates the
    candidates ranked worker, worker + num_workers, ...; it stops when some
    worker has met the objective with a smaller candidate. ``strategy``: a
    ``tf.distribute`` strategy (e.g. MultiWorkerMirroredStrategy, then run
    every process with the same arguments) used for pre-training and
    fine-tuning. ``limit``: evaluate at most this many candidates in this
    call. ``callback(result)`` runs after each candidate.

    ``model`` must be trained and is not changed. ``metric``: ``"accuracy"``
    (top-1 of logits against integer labels; the default), ``"psnr"`` (dB,
    images in [0, 1]: super-resolution, denoising) or a callable
    ``f(y_true, y_pred) -> float``, higher being better. ``loss`` defaults to
    sparse categorical cross-entropy on logits for accuracy and to the mean
    squared error otherwise.
    """
    metric_name, fn = _metric(metric)
    if isinstance(target, bool) or not isinstance(target, (int, float, np.floating)) \
            or not np.isfinite(target):
        raise ValueError(f"target must be a finite number, got {target!r}")
    if metric_name == "accuracy" and not 0.0 < float(target) <= 1.0:
        raise ValueError(f"target must be an accuracy in (0, 1], got {target!r}")
    for v, name in ((finetune_steps, "finetune_steps"), (eval_every, "eval_every"),
                    (pretrain_epochs, "pretrain_epochs"), (batch_size, "batch_size"),
                    (num_workers, "num_workers")):
        _check_int(v, name)
    if pretrain not in ("all", "on_demand"):
        raise ValueError(f"pretrain must be 'all' or 'on_demand', got {pretrain!r}")
    if explore not in ("first", "all"):
        raise ValueError(f"explore must be 'first' or 'all', got {explore!r}")
    if finetune_steps % eval_every:
        raise ValueError(f"finetune_steps ({finetune_steps}) must be a multiple of eval_every "
                         f"({eval_every})")
    _check_int(worker, "worker", low=0)
    if worker >= num_workers:
        raise ValueError(f"worker must be < num_workers ({num_workers}), got {worker}")
    if limit is not None:
        _check_int(limit, "limit")
    xt, yt, xv, yv = (np.asarray(a) for a in (x_train, y_train, x_val, y_val))
    if len(xt) != len(yt) or len(xv) != len(yv) or not len(xt) or not len(xv):
        raise ValueError("x_train/y_train and x_val/y_val must be non-empty and of equal lengths")
    if loss is None:
        loss = (keras.losses.SparseCategoricalCrossentropy(from_logits=True)
                if metric_name == "accuracy" else keras.losses.MeanSquaredError())
    if metric_name == "psnr":
        out_shape = tuple(model.outputs[0].shape[1:])
        for name, arr in (("y_train", yt), ("y_val", yv)):
            if tuple(arr.shape[1:]) != out_shape:
                raise ValueError(f"metric='psnr' compares the model's output with {name}: "
                                 f"output shape {out_shape} but {name} has "
                                 f"{tuple(arr.shape[1:])} per sample")
    tm = _Model(model, modules)
    candidates = _as_candidates(candidates)
    for c in candidates:
        tm.check(c)
    settings = dict(target=float(target), finetune_steps=finetune_steps, eval_every=eval_every,
                    pretrain_epochs=pretrain_epochs, batch_size=batch_size,
                    learning_rate=learning_rate, use_blocks=use_blocks,
                    single_modules=single_modules, pretrain=pretrain, seed=seed)
    if metric_name != "accuracy":  # (manifests of accuracy searches stay as they were)
        settings["metric"] = metric_name
    if explore != "first":
        settings["explore"] = explore
    d = _open_directory(directory, _fingerprint(tm, candidates, settings, (xt, yt, xv, yv)))
    writes = _is_chief(strategy)

    sizes = [tm.size(c) for c in candidates]
    order = sorted(range(len(candidates)), key=lambda i: (sizes[i], i))
    rank = {i: r for r, i in enumerate(order)}

    # -- tuning blocks -----------------------------------------------------
    pretrained, uses = {}, [()] * len(candidates)
    if use_blocks:
        sel = select_blocks(candidates, single_modules=single_modules)
        uses = [tuple(sel.blocks[j] for j in u) for u in sel.uses]
    if use_blocks and pretrain == "on_demand":
        # Each block belongs to the first candidate (in objective order) that
        # uses it; that candidate's new blocks never overlap, so they train
        # together, only once it is reached. The grouping depends on the
        # candidates alone, so any worker trains a group the same way.
        first = {}
        for i in order:
            for b in uses[i]:
                first.setdefault(b, rank[i])
        lazy = {}
        for b, r in first.items():
            lazy.setdefault(r, []).append(b)
        acts = {}

        def ensure(i):
            for r in sorted({first[b] for b in uses[i]}):
                grp = lazy[r]
                if all(b in pretrained for b in grp):
                    continue
                path = d / "blocks" / f"first-{r:05d}"
                if path.with_suffix(".json").exists():
                    pretrained.update(_load_group(path, grp))
                    continue
                if not acts:
                    acts.update(tm.boundary_activations(xt, sorted(
                        {t for b in first for t in tm.g.io(*tm.block_span(b))})))
                got = _pretrain_group(tm, grp, acts, pretrain_epochs, batch_size,
                                      learning_rate, strategy, seed + 10_000 + r, 0)
                if writes:
                    _save_group(path, got)
                pretrained.update(got)
    elif use_blocks:
        groups = overlap_groups(sel.blocks)
        mine = [gi for gi in range(len(groups)) if gi % num_workers == worker]
        todo = [gi for gi in mine if not (d / "blocks" / f"group-{gi:04d}.json").exists()]
        if todo:
            blocks = [sel.blocks[i] for gi in todo for i in groups[gi]]
            ids = sorted({t for b in blocks for t in tm.g.io(*tm.block_span(b))})
            acts = tm.boundary_activations(xt, ids)
            for gi in todo:
                grp = [sel.blocks[i] for i in groups[gi]]
                got = _pretrain_group(tm, grp, acts, pretrain_epochs, batch_size, learning_rate,
                                      strategy, seed + gi, 0)
                if writes:
                    _save_group(d / "blocks" / f"group-{gi:04d}", got)
                pretrained.update(got)
            del acts
        deadline = time.monotonic() + wait_timeout
        for gi in range(len(groups)):
            path = d / "blocks" / f"group-{gi:04d}.json"
            while not path.exists():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"waited {wait_timeout:g} s for block group {gi} "
                                       f"(worker {gi % num_workers} of {num_workers}) in {d}")
                time.sleep(1.0)
            if gi not in todo or not writes:
                pretrained.update(_load_group(path, [sel.blocks[i] for i in groups[gi]]))

    # -- exploration in objective order ------------------------------------
    mine = [i for i in order if rank[i] % num_workers == worker]
    done = {r["index"] for r in _read_results(d)}
    bar = keras.utils.Progbar(len(mine), stateful_metrics=["best_params", "best_score"],
                              verbose=1 if progress else 0)
    best_here = max([r["score"] for r in _read_results(d) if r["worker"] == worker],
                        default=-np.inf)
    evaluated = 0
    data = (xt, yt, xv, yv)
    for n, i in enumerate(mine):
        results = _read_results(d)
        hit = min((r["rank"] for r in results if r["met"]), default=None)
        if explore == "first" and hit is not None and hit < rank[i]:
            break  # a smaller candidate already meets the objective
        if i in done:
            bar.update(n + 1)
            continue
        if limit is not None and evaluated >= limit:
            break
        cand = candidates[i]
        if use_blocks and pretrain == "on_demand":
            ensure(i)
        keras.utils.set_random_seed(seed + 1000 + i)  # the same result on any worker
        t0 = time.perf_counter()
        with _scope(strategy):
            net = tm.build(cand, pretrained, uses[i], masks=True)
        trace = _finetune(net, data, steps=finetune_steps, eval_every=eval_every,
                          target=float(target), batch_size=batch_size,
                          learning_rate=learning_rate, seed=seed + i, strategy=strategy,
                          loss=loss, fn=fn)
        seconds = time.perf_counter() - t0
        steps, score = trace[-1]
        res = dict(index=i, rank=rank[i], candidate=str(cand), rates=list(cand.rates),
                   method=cand.method, size=sizes[i], score=score, steps=steps,
                   met=score >= float(target), trace=trace, seconds=seconds, worker=worker,
                   blocks=[b.key for b in uses[i]])
        if writes:
            if res["met"] or score > best_here:  # keep the weights a final answer may need
                _write_npz(d / "results" / f"{i:05d}.npz",
                           {f"{l.name}|{k}": w for l in net.layers
                            for k, w in enumerate(l.get_weights())})
            _write_json(d / "results" / f"{i:05d}.json", res)
        best_here = max(best_here, score)
        evaluated += 1
        chosen, _ = _choose(_read_results(d) if writes else results + [res], target)
        bar.update(n + 1, values=[("best_params", chosen["size"]),
                                  ("best_score", chosen["score"])])
        if callback is not None:
            callback(res)
        if res["met"] and explore == "first":
            break
    return collect(d, _tm=tm)


def collect(directory, _tm=None) -> SearchResult:
    """The merged state of a search directory (all workers' results)."""
    d = pathlib.Path(directory)
    if not (d / "manifest.json").exists():
        raise ValueError(f"directory: {d} holds no CoCo-Tune search (manifest.json)")
    manifest = json.loads((d / "manifest.json").read_text())
    target = manifest["settings"]["target"]
    metric = manifest["settings"].get("metric", "accuracy")
    fmt = lambda v: format_score(v, metric)  # noqa: E731
    total = len(manifest["candidates"])
    results = sorted(_read_results(d), key=lambda r: r["rank"])
    chosen, met = _choose(results, target)
    ranks = {r["rank"] for r in results}
    if met:
        complete = all(k in ranks for k in range(chosen["rank"]))
    else:
        complete = len(ranks) == total
    pre = 0.0
    for p in (d / "blocks").glob("*.json"):
        meta = json.loads(p.read_text())
        pre += max((m["seconds"] for m in meta.values()), default=0.0)
    fine = sum(r["seconds"] for r in results)
    dense = manifest["dense_size"]
    if chosen is None:
        msg = "no candidate evaluated yet"
    elif met:
        msg = (f"chosen: {chosen['candidate']}, {chosen['size']:,} parameters "
               f"({dense / chosen['size']:.2f}x smaller), {metric} {fmt(chosen['score'])} >= "
               f"{fmt(target)}" + ("" if complete else
                                  "; smaller candidates are still being evaluated"))
    else:
        msg = (f"objective unreachable: no candidate reached {metric} {fmt(target)}"
               f"{'' if complete else ' so far'}; best found: {chosen['candidate']}, "
               f"{chosen['size']:,} parameters, {metric} {fmt(chosen['score'])}")
    return SearchResult(chosen, met, complete, results, target, dense, pre, fine, len(results),
                        total, msg, d, metric, _tm)
