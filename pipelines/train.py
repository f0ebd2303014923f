"""DVC stage train@, and the Hydra app for sweeps: one variant trained, evaluated and recorded, one MLflow run.

  python pipelines/train.py -m dataset=blobs,mnist model.head=softmax,logit seed=0,1 trainer.epochs=3"""

import hydra
from omegaconf import DictConfig

from logitlab.model import import_keras
from logitlab.stages import app


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> object:
    import_keras()  # first, before any module imports Keras: without the extras no stage uses
    from logitlab.stages.train import (
        train,  # its imports (TensorFlow, ...) once the command line is known good
    )

    return app.run(train, cfg)


if __name__ == "__main__":
    app.launch(main, __file__)
