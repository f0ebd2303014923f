"""Hydra imports every module under `hydra_plugins` when it starts, in any process that composes a
config: the app's, and DVC's own when `dvc exp run -S` composes conf/. Importing this one registers
logitlab's config schema (`logitlab_schema`, the first default of conf/config.yaml) in the ConfigStore."""

from logitlab.schema import register

register()
