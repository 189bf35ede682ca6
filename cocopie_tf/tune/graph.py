"""A Keras model as an ordered list of layer calls, cut into modules, and
rebuilt with pruned layers (smaller Conv2Ds or pattern-masked kernels)."""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from cocopie_tf import patterns as P

# Layers that map channel c of their input to channel c of their output, so a
# pruned filter can be followed through them (their per-channel weights are
# sliced along).
_CHANNELWISE = (keras.layers.ReLU, keras.layers.Activation, keras.layers.LeakyReLU,
                keras.layers.BatchNormalization, keras.layers.MaxPooling2D,
                keras.layers.AveragePooling2D, keras.layers.Dropout,
                keras.layers.ZeroPadding2D, keras.layers.SpatialDropout2D)


def _is_conv(layer):
    return (type(layer) is keras.layers.Conv2D and getattr(layer, "groups", 1) == 1)


def _is_follower(layer):
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return layer.depth_multiplier == 1
    return isinstance(layer, _CHANNELWISE)


@dataclass
class _Step:
    layer: object
    args: object
    kwargs: dict
    inputs: list   # tensor ids read
    outputs: list  # tensor ids written


@dataclass(frozen=True)
class Module:
    """A run of layers with one input and one output tensor. ``prunable``:
    its Conv2Ds whose filters can be removed without changing the module's
    output (their channels are consumed by another conv of the module);
    ``convs``: its Conv2Ds with a kernel larger than 1x1 (pattern pruning)."""

    index: int
    layers: tuple
    prunable: tuple
    convs: tuple

    @property
    def name(self):
        return f"{self.layers[0]}..{self.layers[-1]}" if len(self.layers) > 1 else self.layers[0]


class ModelGraph:
    """The layer calls of a single-input, single-output Keras model in
    topological order."""

    def __init__(self, model):
        if not isinstance(model, keras.Model):
            raise ValueError(f"model must be a keras.Model, got {type(model).__name__}")
        if not model.built or not getattr(model, "inputs", None):
            raise ValueError("model must be built with a known input shape (keras.Input)")
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise ValueError("model must have exactly one input and one output")
        self.model = model
        self.input_id = id(model.inputs[0])
        self.shapes = {self.input_id: tuple(model.inputs[0].shape)}
        self.steps = []
        if isinstance(model, keras.Sequential):
            prev = model.inputs[0]
            for layer in model.layers:
                out = layer._inbound_nodes[-1].output_tensors[0] if layer._inbound_nodes else None
                if out is None:
                    raise ValueError("model must be built with a known input shape (keras.Input)")
                self.steps.append(_Step(layer, (prev,), {}, [id(prev)], [id(out)]))
                self.shapes[id(out)] = tuple(out.shape)
                prev = out
            self.output_id = id(prev)
        else:
            known = {self.input_id}
            for layer in model.layers:
                if isinstance(layer, keras.layers.InputLayer):
                    continue
                nodes = [n for n in layer._inbound_nodes
                         if n.input_tensors and all(id(t) in known for t in n.input_tensors)
                         and not any(id(t) in known for t in n.output_tensors)]
                if len(nodes) != 1:
                    raise ValueError(f"model: layer {layer.name!r} is called {len(nodes)} times "
                                     "in the model (shared layers are not supported)")
                n = nodes[0]
                outs = list(n.output_tensors)
                self.steps.append(_Step(layer, n.arguments.args, n.arguments.kwargs,
                                        [id(t) for t in n.input_tensors], [id(t) for t in outs]))
                for t in outs:
                    known.add(id(t))
                    self.shapes[id(t)] = tuple(t.shape)
            self.output_id = id(model.outputs[0])
        self.by_name = {s.layer.name: i for i, s in enumerate(self.steps)}
        self.consumers = {}
        for i, s in enumerate(self.steps):
            for t in s.inputs:
                self.consumers.setdefault(t, []).append(i)

    def cuts(self):
        """Step indices k such that after step k exactly one tensor is live:
        every path from input to output passes through it."""
        last_use = {t: max(c) for t, c in self.consumers.items()}
        live, cuts = {self.input_id}, []
        for k, s in enumerate(self.steps):
            live |= set(s.outputs)
            live = {t for t in live if last_use.get(t, -1) > k or t == self.output_id}
            if len(live) == 1:
                cuts.append(k)
        return cuts

    def io(self, lo, hi):
        """(input tensor id, output tensor id) of steps lo..hi, or None when the
        run does not have exactly one of each."""
        inside = {t for s in self.steps[lo:hi + 1] for t in s.outputs}
        ins = {t for s in self.steps[lo:hi + 1] for t in s.inputs if t not in inside}
        outs = {t for t in inside
                if t == self.output_id or any(c > hi for c in self.consumers.get(t, []))}
        if len(ins) != 1 or len(outs) != 1:
            return None
        return ins.pop(), outs.pop()

    def chain(self, k, lo, hi):
        """For the conv at step k: (followers, consumer convs) when its output
        channels flow only through channel-wise layers into Conv2Ds, all
        within steps lo..hi; else None."""
        followers, consumers, todo = [], [], [k]
        while todo:
            i = todo.pop()
            for t in self.steps[i].outputs:
                if t == self.output_id:
                    return None
                for c in self.consumers.get(t, []):
                    layer = self.steps[c].layer
                    if not lo <= c <= hi or len(self.steps[c].inputs) != 1:
                        return None
                    if _is_conv(layer):
                        consumers.append(c)
                    elif _is_follower(layer):
                        followers.append(c)
                        todo.append(c)
                    else:
                        return None
        return (followers, consumers) if consumers else None

    def make_module(self, index, lo, hi):
        names = tuple(s.layer.name for s in self.steps[lo:hi + 1])
        prunable = tuple(self.steps[k].layer.name for k in range(lo, hi + 1)
                         if _is_conv(self.steps[k].layer) and self.chain(k, lo, hi))
        convs = tuple(self.steps[k].layer.name for k in range(lo, hi + 1)
                      if _is_conv(self.steps[k].layer)
                      and np.prod(self.steps[k].layer.kernel_size) > 1)
        return Module(index, names, prunable, convs)

    def span(self, module):
        return self.by_name[module.layers[0]], self.by_name[module.layers[-1]]


def find_modules(model, modules=None, graph=None) -> list:
    """The model's tuning modules.

    Automatic (``modules=None``): the model is cut where a single tensor
    carries everything (so a residual block, whose shortcut keeps two tensors
    alive, stays whole), and consecutive pieces are grouped so that each
    module holds a conv whose filters only feed another conv of the same
    module (a conv pair, a residual block); trailing activations and pooling
    join the module, layers before the first conv and after the last
    (global pooling, the classifier) stay outside and are never pruned.

    Given: a list of modules, each a list of layer names forming a contiguous
    run with one input and one output tensor.
    """
    g = graph or ModelGraph(model)
    if modules is not None:
        return _given_modules(g, modules)
    cuts = g.cuts()
    bounds, start = [], 0
    for c in cuts:
        bounds.append((start, c))
        start = c + 1
    has_conv = [any(_is_conv(s.layer) for s in g.steps[lo:hi + 1]) for lo, hi in bounds]
    conv_pieces = [i for i, h in enumerate(has_conv) if h]
    if not conv_pieces:
        raise ValueError("model has no Conv2D layer to tune")
    first, last = conv_pieces[0], conv_pieces[-1]
    # Trailing pieces made only of channel-wise layers end the last module.
    def channelwise(piece):
        lo, hi = bounds[piece]
        return all(_is_follower(s.layer) for s in g.steps[lo:hi + 1])

    end = last
    while end + 1 < len(bounds) and channelwise(end + 1):
        end += 1
    groups, cur = [], []
    for i in range(first, end + 1):
        if has_conv[i] and cur:
            lo, hi = bounds[cur[0]][0], bounds[cur[-1]][1]
            if g.make_module(0, lo, hi).prunable:
                groups.append(cur)
                cur = []
        cur.append(i)
    if cur:
        lo, hi = bounds[cur[0]][0], bounds[cur[-1]][1]
        if groups and not g.make_module(0, lo, hi).prunable:
            groups[-1] += cur  # a last lone conv joins the module before it
        else:
            groups.append(cur)
    return [g.make_module(j, bounds[grp[0]][0], bounds[grp[-1]][1]) for j, grp in enumerate(groups)]


def _given_modules(g, modules):
    if isinstance(modules, (str, bytes)) or not len(modules):
        raise ValueError("modules must be a non-empty list of lists of layer names")
    out, prev_hi = [], -1
    for j, names in enumerate(modules):
        names = [names] if isinstance(names, str) else list(names)
        if not names:
            raise ValueError(f"modules[{j}] is empty")
        for n in names:
            if n not in g.by_name:
                raise ValueError(f"modules[{j}]: no layer named {n!r} in the model")
        idx = sorted(g.by_name[n] for n in names)
        lo, hi = idx[0], idx[-1]
        if idx != list(range(lo, hi + 1)):
            missing = [g.steps[k].layer.name for k in range(lo, hi + 1) if k not in idx]
            raise ValueError(f"modules[{j}] is not contiguous: it skips {missing}")
        if lo <= prev_hi:
            raise ValueError(f"modules[{j}] overlaps or comes before modules[{j - 1}]")
        if g.io(lo, hi) is None:
            raise ValueError(f"modules[{j}] ({names[0]}..{names[-1]}) does not have exactly one "
                             "input and one output tensor")
        m = g.make_module(j, lo, hi)
        if not m.convs and not m.prunable:
            raise ValueError(f"modules[{j}] has no Conv2D to prune")
        out.append(m)
        prev_hi = hi
    return out


# ---------------------------------------------------------------------------
# Pruning plans: per layer, the config changes, the weights and a kernel mask.

class MaskConstraint(keras.constraints.Constraint):
    """Keeps pruned weights at zero through training (applied after every
    optimizer step)."""

    def __init__(self, mask):
        self.mask = np.asarray(mask, "float32")

    def __call__(self, w):
        return w * keras.ops.convert_to_tensor(self.mask, dtype=w.dtype)

    def get_config(self):
        return {"mask": self.mask.tolist()}


@dataclass
class LayerPlan:
    weights: list           # numpy arrays, in the layer's get_weights() order
    filters: int | None = None
    mask: np.ndarray | None = None


def _keep(kernel, rate):
    """Indices of the filters kept at prune ``rate``: the largest L1 norms."""
    n = kernel.shape[-1]
    k = max(1, round((1.0 - rate) * n))
    norms = np.abs(kernel).reshape(-1, n).sum(axis=0)
    return np.sort(np.argsort(-norms, kind="stable")[:k])


def module_plan(g, module, rate, method, weights):
    """{layer name: LayerPlan} for one module pruned at ``rate`` with
    ``method`` ('filter': remove the lowest-L1 filters of its prunable convs;
    'pattern': 4-entry patterns + keep the strongest (1 - rate) of the kernels
    of its convs), starting from ``weights`` {layer name: arrays}."""
    lo, hi = g.span(module)
    plan = {}
    if method == "pattern":
        for name in module.convs:
            w = [np.array(a) for a in weights[name]]
            k = w[0]
            library = P.select_library(np.transpose(k, (3, 2, 0, 1)), num_patterns=8)
            pat, conn = P.kernel_masks(k, library, connectivity=1.0 / (1.0 - rate))
            mask = pat & conn
            w[0] = np.where(mask, k, 0).astype(k.dtype)
            plan[name] = LayerPlan(w, mask=mask)
        return plan
    in_keep, out_keep = {}, {}
    for name in module.prunable:
        k = g.by_name[name]
        followers, consumers = g.chain(k, lo, hi)
        keep = _keep(np.asarray(weights[name][0]), rate)
        out_keep[k] = keep
        for f in followers:
            out_keep[f] = keep
        for c in consumers:
            in_keep[c] = keep
    for k in sorted(set(in_keep) | set(out_keep)):
        layer = g.steps[k].layer
        w = [np.asarray(a) for a in weights[layer.name]]
        ik, ok = in_keep.get(k), out_keep.get(k)
        if _is_conv(layer):
            if ik is not None:
                w[0] = w[0][:, :, ik, :]
            if ok is not None:
                w[0] = w[0][..., ok]
                w[1:] = [b[ok] for b in w[1:]]
            plan[layer.name] = LayerPlan([np.ascontiguousarray(a) for a in w],
                                         filters=None if ok is None else len(ok))
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            w = [w[0][:, :, ok, :]] + [b[ok] for b in w[1:]]
            plan[layer.name] = LayerPlan([np.ascontiguousarray(a) for a in w])
        else:  # per-channel weights (batch norm) or none
            plan[layer.name] = LayerPlan([np.ascontiguousarray(a[ok]) for a in w])
    return plan


def plan_size(g, plan, lo=0, hi=None):
    """Parameters of steps lo..hi under ``plan``; masked kernels count their
    non-zeros only."""
    hi = len(g.steps) - 1 if hi is None else hi
    total = 0
    for s in g.steps[lo:hi + 1]:
        p = plan.get(s.layer.name)
        if p is None:
            total += sum(int(np.prod(v.shape)) for v in s.layer.weights)
        else:
            total += sum(a.size for a in p.weights)
            if p.mask is not None:
                total -= int(p.mask.size - np.count_nonzero(p.mask))
    return total


def instantiate(g, lo, hi, plan, weights, prefix="", masks=True, outputs=None):
    """A keras.Model of steps lo..hi (its input: the run's input tensor) with
    fresh layers: pruned per ``plan``, the rest from ``weights``. With
    ``masks``, pattern-pruned kernels get a :class:`MaskConstraint` so training
    keeps their zeros. ``outputs``: tensor ids to output instead of the run's
    output (the run must then be the whole model)."""
    io = g.io(lo, hi)
    if io is None:
        raise ValueError(f"layers {g.steps[lo].layer.name}..{g.steps[hi].layer.name} do not "
                         "form a run with one input and one output")
    inp_id, out_id = io
    inp = keras.Input(g.shapes[inp_id][1:], name=f"{prefix}input")
    env = {inp_id: inp}
    setters = []
    for s in g.steps[lo:hi + 1]:
        layer, p = s.layer, plan.get(s.layer.name)
        cfg = layer.get_config()
        cfg["name"] = prefix + layer.name
        if p is not None and p.filters is not None:
            cfg["filters"] = p.filters
        if p is not None and p.mask is not None and masks:
            cfg["kernel_constraint"] = MaskConstraint(p.mask)
        new = layer.__class__.from_config(cfg)
        w = p.weights if p is not None else weights[layer.name]
        setters.append((new, w))

        def sub(t):
            return env[id(t)] if isinstance(t, keras.KerasTensor) else t

        out = new(*keras.tree.map_structure(sub, tuple(s.args)),
                  **keras.tree.map_structure(sub, dict(s.kwargs)))
        for t_id, t in zip(s.outputs, keras.tree.flatten(out)):
            env[t_id] = t
    model = keras.Model(inp, [env[t] for t in outputs] if outputs else env[out_id])
    for new, w in setters:
        if w:
            new.set_weights(w)
    return model


def dense_weights(g):
    return {s.layer.name: [np.asarray(a) for a in s.layer.get_weights()] for s in g.steps}
