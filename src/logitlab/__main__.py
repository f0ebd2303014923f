"""`python -m logitlab params [--check]`: regenerate params.yaml from conf/, or check that it agrees.
`python -m logitlab server [...]`: an MLflow tracking server for a team, on 127.0.0.1 unless told.
`python -m logitlab serve models:/NAME@ALIAS [...]`: a registered model behind MLflow's scoring server.
`python -m logitlab exps [...]`: `dvc exp show` as one row per variant x experiment, in 100 columns."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

LOOPBACK = "127.0.0.1"


def _params(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from logitlab.schema import PARAMS_FILE, params_drift, write_params
    from logitlab.stages.plots import DVC_FILE, plots_drift, write_plots

    root = args.root.resolve()
    if not (root / "conf" / "config.yaml").is_file():
        parser.error(f"{root} has no conf/config.yaml; pass the project root with --root")
    if args.check:
        drift = params_drift(root)
        if drift:
            print(f"{PARAMS_FILE} disagrees with conf/ at: {', '.join(drift)}; run `make params`", file=sys.stderr)
            return 1
        if plots_drift(root):
            print(f"{DVC_FILE}'s plots disagree with {PARAMS_FILE}'s pipeline; run `make params`", file=sys.stderr)
            return 1
        print(f"{PARAMS_FILE} agrees with conf/, and {DVC_FILE}'s plots with {PARAMS_FILE}")
        return 0
    print(f"wrote {write_params(root)}")
    print(f"wrote {write_plots(root)} (its plots: the variants' histories)")
    return 0


def server_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """`mlflow server` with proxied artifacts; the backend URI goes through the environment
    (MLFLOW_BACKEND_STORE_URI), so its password never shows in the process list."""
    from logitlab.tracking.store import DEFAULT_DB, project_root

    root = project_root(args.root.resolve())
    backend = args.backend_store_uri or os.environ.get("MLFLOW_BACKEND_STORE_URI") or f"sqlite:///{root / DEFAULT_DB}"
    artifacts = args.artifacts_destination or str(root / "mlartifacts")
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", args.host, "--port", str(args.port),
           "--artifacts-destination", artifacts, "--workers", str(args.workers)]
    env = dict(os.environ, MLFLOW_BACKEND_STORE_URI=backend)
    return cmd, env


def _server(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from logitlab.errors import redact_text as redact

    cmd, env = server_command(args)
    if args.host != LOOPBACK:
        print(f"warning: serving on {args.host}, reachable beyond this machine; MLflow has no authentication "
              "unless you add it", file=sys.stderr)
    print(f"MLflow server on http://{args.host}:{args.port}, backend {redact(env['MLFLOW_BACKEND_STORE_URI'])}, "
          f"artifacts {args.artifacts_destination or 'mlartifacts/'} (proxied)", flush=True)
    os.execve(cmd[0], cmd, env)
    return 1  # not reached


def serve_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """`mlflow models serve` on the project's store, in this environment (the pyfunc loader is logitlab's),
    once the model URI is known to name a registered model; a UserError otherwise."""
    import mlflow

    from logitlab.errors import UserError
    from logitlab.schema import TrackingConf
    from logitlab.serving.registry import check_model_files, check_model_uri
    from logitlab.tracking.store import client_limits, sqlite_path, tracking_uri

    conf = TrackingConf(uri=args.tracking_uri)
    uri = tracking_uri(conf, args.root.resolve())
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise UserError(f"no tracking store at {uri}; `make repro` trains and registers the models, or pass "
                        "--tracking-uri (or set MLFLOW_TRACKING_URI)")
    client_limits(conf)  # a server that does not answer fails within seconds
    mlflow.set_tracking_uri(uri)  # the store a failure names (a damaged SQLite file, say)
    check_model_uri(args.model, uri)
    check_model_files(args.model, uri)  # a damaged model fails here in one line, not in MLflow's server
    bin_dir = Path(sys.executable).parent
    cmd = [str(bin_dir / "mlflow"), "models", "serve", "-m", args.model, "--env-manager", "local",
           "--host", args.host, "--port", str(args.port)]
    # MLflow starts the scoring server as `uvicorn ...` through the shell: this environment's, first on PATH
    path = os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")])
    return cmd, dict(os.environ, MLFLOW_TRACKING_URI=uri, PATH=path)


def _serve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from logitlab.errors import RunFailed, UserError, first_line, redact_text

    try:
        cmd, env = serve_command(args)
    except (UserError, RunFailed) as exc:
        print(f"logitlab serve: error: {redact_text(first_line(exc))}", file=sys.stderr)
        return exc.exit_code
    print(f"serving {args.model} on http://{args.host}:{args.port}/invocations", flush=True)
    os.execve(cmd[0], cmd, env)
    return 1  # not reached


def _exps(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from logitlab.stages.views import run

    return run(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m logitlab")
    sub = parser.add_subparsers(dest="command", required=True)
    params = sub.add_parser("params", help="write params.yaml, the composition of conf/ that DVC tracks, and "
                            "dvc.yaml's plots of its variants")
    params.add_argument("--root", type=Path, default=Path.cwd(), help="project root (default: .)")
    params.add_argument("--check", action="store_true",
                        help="only check that params.yaml agrees with conf/, and dvc.yaml's plots with params.yaml")
    server = sub.add_parser("server", help="an MLflow tracking server with proxied artifacts (team set-up)")
    server.add_argument("--root", type=Path, default=Path.cwd(), help="project root, for the defaults (default: .)")
    server.add_argument("--host", default=LOOPBACK, help=f"interface to bind (default: {LOOPBACK}, this machine only)")
    server.add_argument("--port", type=int, default=5000)
    server.add_argument("--backend-store-uri", help="e.g. postgresql://user:password@db:5432/mlflow "
                        "(default: $MLFLOW_BACKEND_STORE_URI, else sqlite:///<root>/mlflow.db)")
    server.add_argument("--artifacts-destination", help="where the server stores artifacts: a folder, s3://... "
                        "(default: <root>/mlartifacts)")
    server.add_argument("--workers", type=int, default=1)
    serve = sub.add_parser("serve", help="a registered model behind MLflow's scoring server (POST /invocations)")
    serve.add_argument("model", help="models:/NAME@ALIAS or models:/NAME/VERSION, "
                       "e.g. models:/logitlab-mnist-25-15-relu@champion")
    serve.add_argument("--root", type=Path, default=Path.cwd(), help="project root, for its store (default: .)")
    serve.add_argument("--tracking-uri", help="the store the registry lives in (default: $MLFLOW_TRACKING_URI, "
                       "else sqlite:///<root>/mlflow.db)")
    serve.add_argument("--host", default=LOOPBACK, help=f"interface to bind (default: {LOOPBACK}, this machine only)")
    serve.add_argument("--port", type=int, default=5001)
    exps = sub.add_parser("exps", help="dvc exp show as one row per variant x experiment: test loss, accuracy, "
                          "the smallest and largest probability")
    from logitlab.stages.views import add_arguments

    add_arguments(exps)
    args = parser.parse_args(argv)
    commands = {"params": _params, "server": _server, "serve": _serve, "exps": _exps}
    from logitlab.errors import UserError

    try:
        return commands[args.command](parser, args)
    except UserError as exc:
        print(f"logitlab {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
