"""logitlab: softmax head versus logit head, as a reproducible DVC + Hydra + MLflow pipeline.

One subpackage per concern, data flowing one way: `data` (fetch, preprocess) -> `model` (the heads)
-> `train` (the trainers, the train stage) -> `evaluate` (metrics, numerics) -> `report`; `serving`
(MLflow models, the registry) and `tracking` (the MLflow store, runs) are called by the others and
call none of them. `schema` types and checks the config; `app` and `cli` are what every Hydra app of
pipelines/ shares. Only the modules that build, train, evaluate or serve a model import TensorFlow.
"""

__version__ = "0.1.0"
