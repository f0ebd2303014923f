"""DVC stage fetch: download (MNIST) or generate (blobs) the raw data of one dataset."""

import hydra
from omegaconf import DictConfig

from logitlab.stages import app


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> object:
    from logitlab.stages.data import (
        fetch,  # its imports (TensorFlow, ...) once the command line is known good
    )

    return app.run(fetch, cfg)


if __name__ == "__main__":
    app.launch(main, __file__)
