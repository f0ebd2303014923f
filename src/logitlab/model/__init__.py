"""The model: the heads (`heads`: each head's activation and loss, no TensorFlow) and the Keras model
built from them (`build`)."""

from __future__ import annotations

import sys
from types import ModuleType


def import_keras() -> ModuleType:
    """`import keras`, less the scikit-learn import Keras makes for its scikit-learn wrappers.

    `import keras` imports scikit-learn (for `keras.wrappers`) whether or not anything uses it: about
    a second of every training process here (`python -X importtime -c 'import keras'` shows it under
    `keras.wrappers`). logitlab uses no wrapper, so scikit-learn is hidden while Keras is imported and
    restored at once: Keras's wrappers catch the ImportError (as on a machine without scikit-learn)
    and scikit-learn stays importable for everything else (`import sklearn` works afterwards). In
    that process `keras.wrappers.SKLearnClassifier` and its siblings say scikit-learn is missing.
    A process that imported Keras or scikit-learn before is left as it is."""
    if "keras" in sys.modules or "sklearn" in sys.modules:
        import keras

        return keras
    sys.modules["sklearn"] = None  # type: ignore[assignment]  # `import sklearn` raises ImportError
    try:
        import keras
    finally:
        if sys.modules.get("sklearn", 0) is None:
            del sys.modules["sklearn"]
    return keras
