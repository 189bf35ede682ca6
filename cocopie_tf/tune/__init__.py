"""CoCo-Tune (Wootz, PLDI 2019): composability-based pruning search.

Candidates (a prune rate per module) share sub-sequences of pruned modules;
Sequitur finds them, the shared *tuning blocks* are pre-trained once
(teacher-student, against the dense model), candidates are assembled from
them, fine-tuned briefly and explored smallest first until one meets the
accuracy objective.

* ``find_modules(model, modules=None)``: module boundaries (auto or given).
* ``Candidate(rates, method)``, ``sample_candidates(num_modules, rates, n)``.
* ``sequitur(sequence)``: the grammar (``Grammar.rules``, ``.expand()``).
* ``select_blocks(candidates)``: the tuning blocks and which candidate uses which.
* ``pretrain_blocks(model, blocks, x)``: teacher-student pre-training.
* ``assemble(model, candidate, pretrained)``: a candidate network.
* ``search(model, x_train, y_train, x_val, y_val, candidates=..., target=...,
  directory=...)``: the whole search (sharded, resumable); ``collect(dir)``
  merges a directory's results.
"""

from cocopie_tf.tune.blocks import Block, Candidate, Selection, sample_candidates, select_blocks
from cocopie_tf.tune.sequitur import Grammar, Nonterminal, sequitur

# These need Keras; load them on first use so `cocopie-tf --help` (which
# imports cocopie_tf.tune.cli) stays light.
_LAZY = {"Module": "graph", "find_modules": "graph", "PretrainedBlock": "explore",
         "SearchResult": "explore", "assemble": "explore", "collect": "explore",
         "pretrain_blocks": "explore", "search": "explore"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"cocopie_tf.tune.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'cocopie_tf.tune' has no attribute {name!r}")


__all__ = ["Block", "Candidate", "Grammar", "Nonterminal", "Selection", "sample_candidates",
           "select_blocks", "sequitur", *_LAZY]
