"""DVC stage train, and the Hydra app for sweeps: train one head on one dataset as one MLflow run.

  python pipelines/train.py -m dataset=blobs,mnist model.head=softmax,logit seed=0,1 trainer.epochs=3"""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter

from logitlab import cli, stages  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> object:
    return stages.entry(stages.train, ROOT)(cfg)


if __name__ == "__main__":
    cli.check_command_line(__file__, "../conf", "config")
    main()
