"""logitlab: softmax head versus logit head, as a reproducible DVC + Hydra + MLflow pipeline.

One module per concern: `data` (fetch, preprocess), `models` (the heads), `training`,
`evaluation`, `tracking` (MLflow), `config` (composition and validation), `stages`
(what each DVC stage / Hydra app runs). TensorFlow is imported only where a model is built.
"""

__version__ = "0.1.0"
