"""The seed's real-time applications, built with this project's public API:
super-resolution x2 (``sr``), style transfer (``style``) and coloring
(``color``). Each module has a Keras model builder, training data from the
photos shipped with scikit-image / scikit-learn, and a quality metric;
:mod:`cocopie_tf.apps.pipeline` trains, prunes, converts, runs and times them.

    from cocopie_tf.apps import pipeline
    result = pipeline.run("sr", preset="demo", out_dir="pictures")
"""

# The layers are registered with Keras on import, so saved app models load
# after ``import cocopie_tf.apps``.
from cocopie_tf.apps import layers
from cocopie_tf.apps.pipeline import APPS, Settings, run, settings_for

__all__ = ["APPS", "Settings", "layers", "run", "settings_for"]
