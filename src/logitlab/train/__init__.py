"""Training: the compiled, seeded model and the divergence check (`loop`), Keras fit's contract in
graph functions (`fast_fit`), the reference's GradientTape loop (`tape`), and the train stage itself
(`stage`). Keras is imported first, and without scikit-learn: see `logitlab.model.import_keras`."""

from logitlab.model import import_keras

import_keras()
