"""DVC stage report, and a command: the comparison table and plots.

  python pipelines/report.py report.runs=experiment   # every run of the MLflow experiment, sweeps included"""

import hydra
from omegaconf import DictConfig

from logitlab.stages import app


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> object:
    from logitlab.stages.report import (
        report,  # its imports (TensorFlow, ...) once the command line is known good
    )

    return app.run(report, cfg)


if __name__ == "__main__":
    app.launch(main, __file__)
