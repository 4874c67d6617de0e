"""`distillery compile | submit | schedule`: the pipeline spec for a KFP cluster, checked before it
leaves this machine (tracking URI, GPU placement, Secrets, cron), and its submission."""
from __future__ import annotations

import re
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from distillery.pipelines.config import RETRAINING_CONFIG, ConfigError, load_config, task_names

_CRON_FIELD = re.compile(r"^[\d*/,\-?LW#A-Za-z]+$")


def check_cluster_tracking_uri(tracking_uri: str) -> None:
    if tracking_uri.startswith(("sqlite:", "file:", "/", ".")):
        raise ValueError(f"tracking URI {tracking_uri!r} is a local store a cluster cannot reach; "
                         "pass --tracking-uri http(s)://<your MLflow server>")


def compile_spec(config: dict, output: Path, tracking_uri: str) -> Path:
    """Compile ``config``'s pipeline to ``output`` with a context for tasks on a cluster."""
    from kfp import compiler

    from distillery.pipelines.pipeline import build_pipeline
    from distillery.pipelines.runtime import project_root, run_context

    check_cluster_tracking_uri(tracking_uri)
    root = project_root()
    check_cluster_placement(config, root)
    ctx = run_context(config, root, resolve_repo=False)
    ctx.tracking_uri, ctx.artifact_location, ctx.launch_id = tracking_uri, None, ""
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(config, ctx.to_json(), for_cluster=True), str(output))
    return output


def check_cluster_placement(config: dict, root: Path) -> None:
    """GPU tasks must fit the quota of the overlay the config says is deployed (compile time)."""
    from distillery.pipelines.cluster import (
        check_gpu_quota,
        kubectl_binary,
        render_overlay,
    )

    cluster = config.get("cluster") or {}
    if not cluster.get("overlay") or not cluster.get("gpu"):
        return
    if kubectl_binary() is None:
        print(f"warning: kubectl is not installed, so the GPU quota of {cluster['overlay']} was not checked",
              file=sys.stderr)
        return
    try:
        check_gpu_quota(cluster, render_overlay(cluster["overlay"], root))
    except ValueError as exc:
        raise ConfigError(f"{config['name']}: cluster: {exc}") from None


def cmd_compile(args) -> None:
    config = load_config(args.config)
    output = Path(args.output or Path("pipelines") / "compiled" / f"{config['name']}.yaml")
    compile_spec(config, output, args.tracking_uri)
    print(f"Compiled {len(task_names(config))} tasks to {output}")


def _cluster_config(args) -> dict:
    """The config of a run bound for a cluster, checked before anything contacts the cluster."""
    check_cluster_tracking_uri(args.tracking_uri)
    config = load_config(args.config)
    repo = str(config["data"]["repo"])
    if "://" not in repo and not repo.startswith("git@"):
        raise ValueError(f"data.repo {repo!r} is a local path that tasks on a cluster cannot read; set data.repo "
                         "in the config to the git URL of this repository")
    return config


@contextmanager
def kfp_api(host: str):
    """A ``kfp.Client`` whose connection and API errors become one clear error naming the host."""
    import kfp
    import kfp_server_api
    import urllib3

    try:
        yield kfp.Client(host=host)
    except (urllib3.exceptions.HTTPError, kfp_server_api.ApiException, TimeoutError, ConnectionError) as exc:
        raise RuntimeError(f"cannot reach the KFP API at {host}: {exc}") from exc


def check_cluster_secrets(args, config: dict) -> None:
    """Every Secret the run's pods read (training templates, the config's ``cluster`` section)
    exists in ``--namespace``, checked through the kubeconfig before anything is submitted."""
    from distillery.components.training.cluster import kube, manifests

    explicit = bool(args.kube_context or args.kubeconfig)
    if args.check_secrets is False or (args.check_secrets is None and not explicit
                                       and not kube.kube_context_available()):
        if args.check_secrets is None:
            print("note: no kube context, so the cluster's Secrets were not checked (--kube-context/--kubeconfig)",
                  file=sys.stderr)
        return
    cluster = config.get("cluster") or {}
    names = sorted({*manifests.required_secrets(),
                    *(cluster[k] for k in ("mlflow_secret", "dvc_secret") if cluster.get(k))})
    with kube.connect(args.kube_context, args.kubeconfig) as api:
        kube.check_secrets(api, args.namespace, names)
    print(f"Secrets {', '.join(names)} exist in namespace {args.namespace!r}")


def cmd_submit(args) -> None:
    config = _cluster_config(args)
    check_cluster_secrets(args, config)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_spec(config, Path(tmp) / "pipeline.yaml", args.tracking_uri)
        with kfp_api(args.host) as client:
            result = client.create_run_from_pipeline_package(
                str(package), arguments={}, run_name=args.run_name or config["name"],
                experiment_name=args.experiment, enable_caching=False, service_account=_service_account(config))
    print(f"Submitted run {result.run_id} to {args.host}")


def _service_account(config: dict) -> str:
    """Pipeline pods run as this account (k8s/base/rbac.yaml grants it least privilege)."""
    from distillery.pipelines.cluster import DEFAULTS

    return (config.get("cluster") or DEFAULTS)["service_account"]


def validate_cron(cron: str) -> str:
    """KFP recurring runs take 6 fields (seconds first), evaluated in UTC."""
    fields = cron.split()
    if len(fields) != 6 or not all(_CRON_FIELD.match(f) for f in fields):
        raise ValueError(f"cron {cron!r} must have 6 fields, seconds first, in UTC, e.g. '0 0 3 * * *' "
                         f"(03:00 UTC daily); got {len(fields)} field(s)")
    return cron


def cmd_schedule(args) -> None:
    cron = validate_cron(args.cron)
    config = _cluster_config(args)
    if config["pipeline"] != "retraining":
        raise ConfigError(f"{args.config} describes a {config['pipeline']} pipeline; scheduled runs retrain: "
                          f"use a config with `pipeline: retraining` (e.g. {RETRAINING_CONFIG})")
    check_cluster_secrets(args, config)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_spec(config, Path(tmp) / "pipeline.yaml", args.tracking_uri)
        with kfp_api(args.host) as client:
            experiment = client.create_experiment(args.experiment)
            job = client.create_recurring_run(
                experiment_id=experiment.experiment_id, job_name=args.name or f"{config['name']}-scheduled",
                description=f"Scheduled retraining: {config.get('description', '')}", cron_expression=cron,
                pipeline_package_path=str(package), max_concurrency=1, no_catchup=True, enable_caching=False,
                service_account=_service_account(config))
    print(f"Scheduled {job.recurring_run_id} on {args.host}: cron {cron!r} (UTC), max concurrency 1, no catch-up")
