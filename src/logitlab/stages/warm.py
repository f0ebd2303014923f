"""What the fork server of a parallel train sweep imports before it forks the workers
(stages/forking.py, `fork_server`): the train app's modules, as a worker's first job imports them."""

from logitlab.stages.workers import _import_app

_import_app("train")
