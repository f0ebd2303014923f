"""The model registry: one registered model per dataset x task x architecture (the hidden layers'
widths and activation): `logitlab-mnist-25-15-relu` holds the 25-15 heads, `logitlab-mnist-784-256-relu`
the GradientTape notebook's 784-256 model, `logitlab-mnist-binary-25-15-relu` the binary heads. One
version per trained variant, an alias per head pointing at that head's latest version (`@logit`,
`@softmax_strict`; `@logit_gradient_tape` for another trainer), and `@champion` on the version with
the lowest test loss of its own probabilities (`test_loss_f64`).

Why a model per architecture: @champion answers the lesson's question, which head to serve for this
network. Ranked across architectures, in one registered model per dataset x task, @champion went to
the 784-256 notebook model, which beats every 25-15 head on loss by its size alone: it said which
network is bigger, not which head is better. A change of network is a new model, not a new version.

Why not Keras's `test_loss`: the multi-class `sigmoid` head trains and is evaluated on softmax of
its logits (Keras's rescue), so its `test_loss` equals the softmax head's while its own outputs,
which it serves, do not even sum to 1; `test_loss_f64` is the loss of what the model serves. Ties
(softmax and logit train bit-identically) go to the head that outputs logits, the lesson's advice.

And model URIs checked before use: a name, alias or version that does not exist is one line naming
it and listing what exists, never MLflow's traceback.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from logitlab.errors import UserError, first_line, redact_text
from logitlab.model.heads import Head
from logitlab.schema import Task, TrainerName
from logitlab.tracking.store import sqlite_path, store_call

PREFIX = "logitlab"
CHAMPION = "champion"
RANKED_BY = "test_loss_f64"
TAG_LOSS, TAG_FROM_LOGITS, TAG_VARIANT = f"logitlab.{RANKED_BY}", "logitlab.from_logits", "logitlab.variant"
TAG_STAGE = "logitlab.stage"   # the DVC stage that trains and registers the version
KERAS_FILE = "model.keras"     # the Keras flavor's file, in its data folder


def architecture(layers: Sequence[int], activation: str) -> str:
    """The hidden layers' widths and activation, as a registered model's name spells them: `25-15-relu`."""
    return "-".join(str(int(units)) for units in layers) + f"-{activation}"


def registered_name(dataset: str, task: str, layers: Sequence[int], activation: str) -> str:
    return (f"{PREFIX}-{dataset}" + ("" if task == Task.multiclass else f"-{task}")
            + f"-{architecture(layers, activation)}")


DEFAULT_NAME = registered_name("mnist", Task.multiclass, [25, 15], "relu")  # make serve's, the README's


def alias(head: str, trainer: str) -> str:
    return head if trainer == TrainerName.fit else f"{head}_{trainer}"


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    alias: str
    champion: str  # the alias that holds @champion now


def register(model_id: str, run_id: str, *, dataset: str, task: str, layers: Sequence[int], activation: str,
             head: Head, trainer: str, variant: str, metrics: dict[str, float], stage: str | None = None) -> Registered:
    """A new version of the dataset x task x architecture's registered model for the logged model
    `model_id`; the head's alias moves to it, and @champion to the best version any head's alias
    points at."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    name = registered_name(dataset, task, layers, activation)

    def create() -> None:  # once per name; a concurrent job may create it first
        try:
            client.create_registered_model(name, description=(
                f"logitlab: every head of the {architecture(layers, activation)} network trained on {dataset} "
                f"({task}); @{CHAMPION} has the lowest {RANKED_BY}, and each head's alias its latest version"))
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise

    store_call(f"create registered model {name}", create)
    tags = {TAG_VARIANT: variant, "logitlab.head": head.name, "logitlab.trainer": trainer,
            **({TAG_STAGE: stage} if stage else {}),
            TAG_FROM_LOGITS: str(head.from_logits),
            **{f"logitlab.{k}": repr(float(metrics[k])) for k in ("test_loss", "test_accuracy", RANKED_BY)}}
    version = store_call(f"register a version of {name}", client.create_model_version, name,
                         source=f"models:/{model_id}", run_id=run_id, model_id=model_id, tags=tags,
                         await_creation_for=0)
    store_call(f"link {name} version {version.version} to its logged model", _link_version, client, model_id,
               name, version.version)
    head_alias = alias(head.name, trainer)
    with aliases_lock(mlflow.get_tracking_uri()):  # train stages run side by side (make repro): one crowning at a time
        store_call(f"set alias {name}@{head_alias}", client.set_registered_model_alias, name, head_alias,
                   version.version)
        champion = crown(client, name)
    return Registered(name, str(version.version), head_alias, champion)


def _link_version(client: Any, model_id: str, name: str, version: Any) -> None:
    """Add the version to its logged model's `mlflow.modelVersions` tag, as mlflow.register_model does
    (what the Models tab's "Registered models" column shows); create_model_version alone does not."""
    import json

    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    tags = client.get_logged_model(model_id).tags
    versions = json.loads(tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
    entry = {"name": name, "version": version}
    if entry not in versions:
        client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps([*versions, entry])})


ALIASES_LOCK_TIMEOUT_S = 120


def aliases_lock(tracking_uri: str) -> Any:
    """A lock around the aliases' read-modify-write (the head's alias, then @champion from every
    head's alias), between processes: two train stages crowning at once could each read the aliases
    before the other's was set, and the last to write @champion would crown without the other's version.

    A SQLite store's lock file sits beside its database. Any other store (a tracking server) gets
    one in this machine's temporary folder, named after the store: that serializes the processes of
    this machine, which is where `make repro` runs its stages side by side; processes on several
    machines writing one server's aliases at the same moment are not serialized (MLflow has no
    compare-and-set on aliases). Held for more than ALIASES_LOCK_TIMEOUT_S: StoreUnavailable."""
    import contextlib
    import hashlib
    import tempfile

    from filelock import FileLock, Timeout

    from logitlab.errors import StoreUnavailable

    db = sqlite_path(tracking_uri)
    if db is not None:
        path = db.with_name(db.name + ".aliases.lock")
    else:
        digest = hashlib.sha256(tracking_uri.encode()).hexdigest()[:16]
        path = Path(tempfile.gettempdir()) / f"logitlab-aliases-{digest}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def held():
        try:
            lock = FileLock(path, timeout=ALIASES_LOCK_TIMEOUT_S)
            lock.acquire()
        except Timeout:
            raise StoreUnavailable(f"the registry's aliases in {redact_text(tracking_uri)} stayed locked by another "
                                   f"process for {ALIASES_LOCK_TIMEOUT_S} s ({path})") from None
        try:
            yield
        finally:
            lock.release()

    return held()


def crown(client: Any, name: str) -> str:
    """Move @champion to the best of the versions the heads' aliases point at; returns its alias."""
    model = store_call(f"read registered model {name}", client.get_registered_model, name)
    ranked = []
    for head_alias, version in model.aliases.items():
        if head_alias == CHAMPION:
            continue
        tags = store_call(f"read {name} version {version}", client.get_model_version, name, version).tags
        ranked.append((float(tags.get(TAG_LOSS, "inf")), tags.get(TAG_FROM_LOGITS) != "True", head_alias, version))
    _, _, best, version = min(ranked)
    store_call(f"set alias {name}@{CHAMPION}", client.set_registered_model_alias, name, CHAMPION, version)
    return best


# --------------------------------------------------------------------------- model URIs

_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))?$")


def check_model_uri(uri: str, tracking_uri: str) -> None:
    """Make sure `models:/NAME@ALIAS` (or `models:/NAME/VERSION`) names something the registry at
    `tracking_uri` holds; a UserError naming it and listing what exists otherwise. A logged model's
    own URI (`models:/m-...`) is checked as a logged model."""
    import mlflow
    from mlflow.exceptions import MlflowException

    match = _URI.match(uri)
    if not match:
        raise UserError(f"model {uri!r} is not a registry URI; use models:/NAME@ALIAS or models:/NAME/VERSION, "
                        f"e.g. models:/{DEFAULT_NAME}@{CHAMPION}")
    client = store_call("open the tracking store", mlflow.MlflowClient, tracking_uri, registry_uri=tracking_uri)
    name, wanted_alias, version = match["name"], match["alias"], match["version"]
    store = redact_text(tracking_uri)
    if name.startswith("m-") and not (wanted_alias or version):
        try:
            client.get_logged_model(name)
        except MlflowException:
            raise UserError(f"no logged model {name!r} in the tracking store {store}") from None
        return
    names = sorted(m.name for m in store_call("list registered models", client.search_registered_models,
                                              max_results=1000))
    if name not in names:
        raise UserError(f"no registered model {name!r} in the tracking store {store}; registered: "
                        f"{', '.join(names) or 'none (make repro registers the pipeline models)'}")
    model = store_call(f"read registered model {name}", client.get_registered_model, name)
    if wanted_alias is None and version is None:
        raise UserError(f"model {uri!r} names no version; use models:/{name}@ALIAS (valid: "
                        f"{', '.join(sorted(model.aliases)) or 'none'}) or models:/{name}/VERSION")
    if wanted_alias is not None and wanted_alias not in model.aliases:
        raise UserError(f"registered model {name!r} has no alias {wanted_alias!r}; valid: "
                        f"{', '.join(sorted(model.aliases)) or 'none'}")
    if version is not None:
        versions = sorted(int(v.version) for v in store_call(f"list versions of {name}", client.search_model_versions,
                                                             f"name = '{name}'"))
        if not version.isdigit() or int(version) not in versions:
            raise UserError(f"registered model {name!r} has no version {version!r}; valid: "
                            f"{', '.join(map(str, versions)) or 'none'}")


def check_model_files(uri: str, tracking_uri: str) -> Path:
    """The files of the model `uri` names (already checked by check_model_uri), fetched as MLflow fetches
    them, and read far enough to know they load: the MLmodel file, and the Keras file a whole zip
    archive (every member's CRC checked) with the model's config and weights. A damaged one is a
    UserError naming the model and what remakes it. Returns the local folder."""
    import zipfile

    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    version, location = _resolve(uri, tracking_uri)
    local = Path(store_call(f"fetch the files of {uri}", mlflow.artifacts.download_artifacts,
                            artifact_uri=location, tracking_uri=tracking_uri))
    try:
        conf = Model.load(str(local))
        keras_file = local / conf.flavors["keras"]["data"] / KERAS_FILE
        with zipfile.ZipFile(keras_file) as archive:
            bad = archive.testzip()
            members = set(archive.namelist())
        if bad is not None:
            raise ValueError(f"{KERAS_FILE}: member {bad} fails its CRC check")
        if not {"config.json", "model.weights.h5"} <= members:
            raise ValueError(f"{KERAS_FILE}: no config.json or model.weights.h5 in it")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, MlflowException) as exc:
        if version is not None and version.tags.get(TAG_STAGE):
            remake = f"dvc repro -f {version.tags[TAG_STAGE]}"
        else:
            run_id = version.run_id if version is not None else None
            remake = "rerun the run that logged it" + (f" ({run_id})" if run_id else "")
        raise UserError(f"model {uri} is damaged ({first_line(exc)}); remake it: {remake}") from None
    return local


def _resolve(uri: str, tracking_uri: str) -> tuple[Any, str]:
    """The registry version `uri` names (None for a logged model's own URI) and its logged model's
    artifact location, read from the store at `tracking_uri` (not the process's default)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri, registry_uri=tracking_uri)
    match = _URI.match(uri)
    name = match["name"] if match else uri
    version = None
    if match and match["alias"]:
        version = store_call(f"read {uri}", client.get_model_version_by_alias, name, match["alias"])
    elif match and match["version"]:
        version = store_call(f"read {uri}", client.get_model_version, name, match["version"])
    # a version's logged model: its model_id, or the `models:/<model_id>` it was registered from
    model_id = (getattr(version, "model_id", None) or str(version.source).removeprefix("models:/")
                if version is not None else name)
    return version, store_call(f"read logged model {model_id}", client.get_logged_model, model_id).artifact_location


def load(uri: str, tracking_uri: str | None = None) -> Any:
    """mlflow.pyfunc.load_model(uri), with the URI and the model's files checked first (one line if it
    names nothing, or if its files are damaged)."""
    import mlflow

    tracking_uri = tracking_uri or mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)  # the store a failure names
    check_model_uri(uri, tracking_uri)
    local = check_model_files(uri, tracking_uri)
    return mlflow.pyfunc.load_model(str(local))
