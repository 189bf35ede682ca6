"""Candidates, their symbol strings and the choice of tuning blocks."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from cocopie_tf.tune.sequitur import Nonterminal, sequitur

METHODS = ("filter", "pattern")


def _check_rate(r, what="rates"):
    try:
        r = float(r)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: {r!r} is not a number") from None
    if not 0.0 < r < 1.0:
        raise ValueError(f"{what}: prune rate {r!r} is outside (0, 1)")
    return r


@dataclass(frozen=True)
class Candidate:
    """One network to try: a prune rate per module and a pruning method
    ('filter': remove the filters with the smallest L1 norms, as in Wootz;
    'pattern': this project's pattern + connectivity pruning, the rate being
    the share of kernels removed)."""

    rates: tuple
    method: str = "filter"

    def __post_init__(self):
        if isinstance(self.rates, (str, bytes)) or not hasattr(self.rates, "__len__") \
                or not len(self.rates):
            raise ValueError(f"rates must be a non-empty sequence, got {self.rates!r}")
        object.__setattr__(self, "rates", tuple(_check_rate(r) for r in self.rates))
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")

    def symbols(self):
        """The candidate as a string of ``(module, rate, method)`` symbols."""
        return [(i, r, self.method) for i, r in enumerate(self.rates)]

    def __str__(self):
        return f"{self.method}[{', '.join(f'{r:g}' for r in self.rates)}]"


def sample_candidates(num_modules: int, rates=(0.3, 0.5, 0.7), n: int | None = None,
                      method="filter", seed: int = 0) -> list:
    """Candidates over ``num_modules`` modules whose rates come from ``rates``.

    ``n=None`` (or n >= the number of combinations): every combination, in a
    fixed order; otherwise ``n`` distinct ones drawn with ``seed``. ``method``
    is 'filter', 'pattern' or a list of both (each combination per method).
    """
    if not isinstance(num_modules, (int, np.integer)) or num_modules < 1:
        raise ValueError(f"num_modules must be a positive integer, got {num_modules!r}")
    rates = sorted({_check_rate(r) for r in rates})
    if not rates:
        raise ValueError("rates must not be empty")
    methods = [method] if isinstance(method, str) else list(method)
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {m!r}")
    combos = [(r, m) for m in methods for r in itertools.product(rates, repeat=num_modules)]
    if n is not None:
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be a positive integer or None, got {n!r}")
        if n < len(combos):
            pick = np.random.default_rng(seed).choice(len(combos), size=n, replace=False)
            combos = [combos[i] for i in sorted(pick)]
    return [Candidate(r, m) for r, m in combos]


@dataclass(frozen=True)
class Block:
    """A tuning block: modules ``start .. start+len(rates)-1`` pruned at
    ``rates`` with ``method``."""

    start: int
    rates: tuple
    method: str

    @property
    def stop(self):
        return self.start + len(self.rates)

    @property
    def key(self):
        return f"{self.method}-m{self.start}-" + "-".join(f"{r:g}" for r in self.rates)

    def overlaps(self, other):
        return self.start < other.stop and other.start < self.stop


@dataclass
class Selection:
    """``blocks``: the tuning blocks to pre-train; ``uses[i]``: indices into
    ``blocks`` that candidate i is assembled from (its other modules start
    from the dense model's weights, pruned); ``grammar``: the Sequitur
    grammar of all candidates' symbol strings."""

    blocks: list
    uses: list
    grammar: object = field(repr=False, default=None)


def select_blocks(candidates, single_modules: bool = True) -> Selection:
    """Chooses the tuning blocks for ``candidates`` (Wootz's heuristic).

    Every candidate's symbol string, each closed by its own end marker, goes
    into one Sequitur grammar; its rules are the sub-sequences that repeat.
    Rules used by one network only are dropped; walking the rule DAG
    children first, a parent rule is preferred to its children only when it
    occurs as often as its most frequent child (otherwise the children serve
    more networks). Each network then takes, top-down, the highest preferred
    rule on every path of its derivation. With ``single_modules`` a module
    symbol left outside every block becomes a one-module block when at least
    two networks share it (an extension: pre-training it costs little).
    Finally, a rule that ends up serving a single network is replaced by its
    children there, so every block is shared by at least two networks.
    """
    candidates = list(candidates)
    if not candidates:
        raise ValueError("candidates must not be empty")
    for c in candidates:
        if not isinstance(c, Candidate):
            raise ValueError(f"candidates must be Candidate objects, got {c!r}")
    n_mod = {len(c.rates) for c in candidates}
    if len(n_mod) != 1:
        raise ValueError(f"candidates have different numbers of modules: {sorted(n_mod)}")
    seq = []
    for i, c in enumerate(candidates):
        seq += c.symbols()
        seq.append(("end", i))
    g = sequitur(seq)
    nets = [[]]
    for sym in g.rules[0]:
        if not isinstance(sym, Nonterminal) and sym[0] == "end":
            nets.append([])
        else:
            nets[-1].append(sym)
    nets = nets[:len(candidates)]

    # Rules in parent-before-child order (the grammar is a DAG).
    order, seen = [], set()

    def visit(r):
        seen.add(r)
        for s in g.rules[r]:
            if isinstance(s, Nonterminal) and s.rule not in seen:
                visit(s.rule)
        order.append(r)

    visit(0)
    postorder = order[:]          # children first
    topo = order[::-1]            # parents first
    freq = Counter({0: 1})
    for r in topo:
        for s in g.rules[r]:
            if isinstance(s, Nonterminal):
                freq[s.rule] += freq[r]
    reach = {}
    for r in postorder:
        reach[r] = {r}.union(*(reach[s.rule] for s in g.rules[r] if isinstance(s, Nonterminal)))
    networks = {r: set() for r in g.rules}
    for n, syms in enumerate(nets):
        for s in syms:
            if isinstance(s, Nonterminal):
                for r in reach[s.rule]:
                    networks[r].add(n)
    keep = {r: r != 0 and len(networks[r]) >= 2 for r in g.rules}
    chosen = {}
    for r in postorder:
        kids = [s.rule for s in g.rules[r] if isinstance(s, Nonterminal) and keep[s.rule]]
        if not keep[r]:
            chosen[r] = False
        elif not kids:
            chosen[r] = True
        else:
            chosen[r] = freq[r] >= max(freq[k] for k in kids)

    def walk(s, out):
        if isinstance(s, Nonterminal):
            if chosen[s.rule]:
                out.append(("rule", s.rule))
            else:
                for t in g.rules[s.rule]:
                    walk(t, out)
        else:
            out.append(("sym", s))

    while True:
        parts = []
        for syms in nets:
            out = []
            for s in syms:
                walk(s, out)
            parts.append(out)
        count = Counter(p for out in parts for p in set(out))
        # A preferred rule that ends up serving one network only (the others
        # take a parent) is not worth pre-training: use its children there.
        lonely = [p[1] for p, n in count.items() if p[0] == "rule" and n < 2]
        if not lonely:
            break
        for r in lonely:
            chosen[r] = False

    blocks, index, uses = [], {}, []

    def block_of(terms):
        b = Block(terms[0][0], tuple(t[1] for t in terms), terms[0][2])
        if b not in index:
            index[b] = len(blocks)
            blocks.append(b)
        return index[b]

    for out in parts:
        used = []
        for p in out:
            if p[0] == "rule":
                used.append(block_of(g.expand(p[1])))
            elif single_modules and count[p] >= 2:
                used.append(block_of([p[1]]))
        uses.append(tuple(used))
    # Stable, readable order: by first module, then length, then rates.
    perm = sorted(range(len(blocks)), key=lambda i: (blocks[i].start, len(blocks[i].rates),
                                                     blocks[i].method, blocks[i].rates))
    new = {old: k for k, old in enumerate(perm)}
    return Selection([blocks[i] for i in perm], [tuple(sorted(new[i] for i in u)) for u in uses], g)


def overlap_groups(blocks) -> list:
    """Blocks split into groups of pairwise non-overlapping ones (greedy
    interval colouring): each group pre-trains together in one model."""
    groups = []
    for i in sorted(range(len(blocks)), key=lambda i: (blocks[i].start, blocks[i].stop)):
        for grp in groups:
            if not any(blocks[i].overlaps(blocks[j]) for j in grp):
                grp.append(i)
                break
        else:
            groups.append([i])
    return groups
