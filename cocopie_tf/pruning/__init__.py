"""Pattern + connectivity pruning with extended ADMM, inside ``model.fit``.

    model = cocopie_tf.prune_patterns(model, connectivity=3.6)
    model.compile(...)
    model.fit(x, y, epochs=12, callbacks=[cocopie_tf.ADMMPruning()])
    plain = cocopie_tf.strip_pruning(model)
    print(cocopie_tf.pruning_report(plain))
"""

from cocopie_tf.pruning.api import PrunableLayer, prune_patterns, pruning_report, strip_pruning
from cocopie_tf.pruning.callback import ADMMPruning, prune_oneshot
from cocopie_tf.pruning.wrapper import PatternPruning

__all__ = [
    "ADMMPruning",
    "PatternPruning",
    "PrunableLayer",
    "prune_oneshot",
    "prune_patterns",
    "pruning_report",
    "strip_pruning",
]
