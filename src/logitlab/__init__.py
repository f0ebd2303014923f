"""logitlab: softmax head versus logit head, as a reproducible DVC + Hydra + MLflow pipeline.

One subpackage per concern, in layers whose imports only point down (tests/test_layout.py checks
the table in the README's Layout section): `errors` and `files` at the bottom; `schema` (the
config's types and checks); `data` (dataset plug-ins), `model` (head plug-ins, the Keras model, its
compiled functions) and `tracking` (the MLflow store and runs); `train` and `evaluate` (metrics in
one registry, the numerics); `report` and `serving`; and on top `stages`, the DVC stages, sweeps and
command line that use them all. Only the modules that build, train, evaluate or serve a model
import TensorFlow.
"""

__version__ = "0.1.0"
