"""MLflow: the store and its bounded calls (`store`), a run's life (`runs`), where a run's data came
from (`lineage`), and the runs whose process died (`reaper`)."""
