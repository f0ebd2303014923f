"""DVC stage preprocess: raw data to float32 train/test arrays."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter

from logitlab import cli, stages  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> object:
    return stages.entry(stages.preprocess, ROOT)(cfg)


if __name__ == "__main__":
    cli.check_command_line(__file__, "../conf", "config")
    main()
