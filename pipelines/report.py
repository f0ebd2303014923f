"""DVC stage report, and a command: the comparison table and plots, read back from MLflow.

  python pipelines/report.py report.runs=experiment   # every run of the experiment, sweeps included
"""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter

from logitlab import cli, stages  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> object:
    return stages.entry(stages.report, ROOT)(cfg)


if __name__ == "__main__":
    cli.check_command_line(__file__, "../conf", "config")
    main()
