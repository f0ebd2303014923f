"""The model: the heads (`heads`: each head's activation and loss, no TensorFlow) and the Keras model
built from them (`build`)."""

from __future__ import annotations

import sys
from types import ModuleType


# What Keras 3 imports at its own import, when installed, for features logitlab never uses:
# scikit-learn for its scikit-learn wrappers (keras.wrappers), matplotlib.pyplot for one image-gallery
# plot (keras.visualization.plot_image_gallery).
KERAS_EXTRAS = ("sklearn", "matplotlib")


def import_keras() -> ModuleType:
    """`import keras`, less the imports Keras makes for features logitlab never uses (KERAS_EXTRAS).

    `import keras` imports scikit-learn and matplotlib.pyplot whether or not anything uses them: 0.75 s
    of the 4.1 s a train stage took to import its modules on an Intel Xeon (`python -X importtime`
    shows them under `keras.src.wrappers` and `keras.src.visualization`). They are hidden while Keras
    is imported and restored at once: Keras catches the ImportError (as on a machine without them),
    and both stay importable for everything else (the blobs fetch's make_blobs, the per-run figure's
    matplotlib). In that process `keras.wrappers.SKLearnClassifier` and its siblings say scikit-learn
    is missing, and `keras.visualization.plot_image_gallery` matplotlib. Only Keras's first import in
    a process is changed, and only for an extra not imported before.

    Call it before anything imports Keras: the train app does first thing (pipelines/train.py), and
    `logitlab.train` on its import."""
    hidden = [] if "keras" in sys.modules else [name for name in KERAS_EXTRAS if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # `import name` raises ImportError
    try:
        import keras
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
    return keras
