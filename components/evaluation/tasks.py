"""Task bodies of the evaluation stage: metrics, figures, model logging, the promotion gate and
promotion, then the parent run is closed with a readable outcome; and OOD model selection.
The method's call and its result: the stage contract, :mod:`distillery.components.evaluation.contract`."""
from __future__ import annotations

from distillery.components.core.datasets import (
    dataset_file_reader,
    load_arrays,
    load_labelled,
)
from distillery.components.core.tracking import (
    SKIP,
    finish_parent,
    method_task,
    parent_run_id,
    progress,
)


def log_model(model, name: str, example):
    """Log a PyTorch model with signature and input example; the requirement is pinned to the
    running torch so MLflow does not spend seconds inferring it. Pickle format: MLflow 3's default
    ``pt2`` export fixes the batch size to the input example's, so the served model would reject
    any other batch size."""
    import torch
    from mlflow.models import infer_signature

    import mlflow

    with torch.no_grad():
        output = model(torch.as_tensor(example)).numpy()
    return mlflow.pytorch.log_model(model, name=name, signature=infer_signature(example, output),
                                    input_example=example, pip_requirements=[f"torch=={torch.__version__}"],
                                    serialization_format="pickle")


def run_evaluation(method: str, context: str, run_key: str, params: str, dataset: str, splits: str, teacher: str,
                   student: str) -> None:
    """The evaluation stage's task: the method's own task body (each evaluation method logs its own
    kind of result), found by its name."""
    bodies = {"classification": run_classification, "ood_selection": run_ood_selection}
    if method not in bodies:
        raise ValueError(f"evaluation method {method!r} has no task body; known: {sorted(bodies)}")
    bodies[method](method, context, run_key, params, dataset, splits, teacher, student)


def run_classification(method: str, context: str, run_key: str, params: str, dataset: str, splits: str,
                       teacher: str, student: str) -> None:
    import numpy as np

    import mlflow
    from distillery.components.core import devices, models, plots
    from distillery.components.core.datasets import sensitive_attributes
    from distillery.components.core.export import log_onnx
    from distillery.components.evaluation.fairness import fairness_metrics
    from distillery.components.evaluation.gate import check_gate, validate_gate
    from distillery.components.evaluation.metrics import CLASSIFICATION_METRICS
    from distillery.components.evaluation.promotion import register_and_promote

    with method_task("evaluation", method, context, run_key, params) as (ctx, entry, p):
        data, split = load_labelled(dataset), load_arrays(splits)
        test = split["test_rows"]
        x_test, y_test = data.features[test], data.labels[test]
        # bad input (a gate on a metric not computed, a one-group attribute) fails before any work
        sensitive = sensitive_attributes(data.meta, x_test, data.ids[test], dataset_file_reader(ctx))
        fairness_names = list(fairness_metrics(y_test, y_test, sensitive, data.num_classes))
        gate = validate_gate(p["gate"], [*CLASSIFICATION_METRICS, *fairness_names])
        client = mlflow.MlflowClient()
        parent = parent_run_id(ctx)
        results, fitted = {}, {"teacher": models.load(teacher), "student": models.load(student)}
        device = devices.current().device  # predictions on the stage's device; models are logged from the CPU
        for role, model in fitted.items():
            probs = models.predict_proba(model.to(device), x_test)
            metrics = entry.load()(probs, y_test, p["ece_bins"])
            metrics.update(fairness_metrics(probs.argmax(-1).numpy(), y_test, sensitive, data.num_classes))
            results[role] = metrics
            for key, value in {**metrics, "parameters": models.count_parameters(model)}.items():
                mlflow.log_metric(f"{role}_{key}", value)
                client.log_metric(parent, f"{role}_{key}", value)
            figures = {"confusion_matrix": plots.confusion_matrix_figure(
                           y_test, probs.argmax(-1).numpy(), data.meta["classes"],
                           f"{role} confusion matrix (test split)"),
                       "reliability_diagram": plots.reliability_diagram_figure(
                           probs.numpy(), y_test, p["ece_bins"], f"{role} reliability diagram (test split)")}
            for name, figure in figures.items():
                plots.log_figure(figure, f"{role}_{name}.png")
        ratio = results["student"]["accuracy"] / results["teacher"]["accuracy"]
        client.log_metric(parent, "student_to_teacher_accuracy", ratio)
        history = sorted(client.get_metric_history(parent, "teacher_test_accuracy"), key=lambda m: m.step)
        curve = plots.learning_curve_figure([m.step for m in history], [m.value for m in history],
                                            {"final teacher": results["teacher"]["accuracy"],
                                             "student": results["student"]["accuracy"]})
        plots.log_figure(curve, "learning_curve.png", also_to=(parent,))

        example = np.ascontiguousarray(x_test[:5], dtype=np.float32)
        fitted = {role: model.cpu() for role, model in fitted.items()}  # any machine can load what is logged
        log_model(fitted["teacher"], "teacher", example)
        student_info = log_model(fitted["student"], "student", example)
        log_onnx(fitted["student"], example)  # the deployable student, as artifact student.onnx of this run
        metric = p["metric"]
        name = registered_model_name(p, data.meta)

        def score(uri: str) -> float:
            champion = mlflow.pytorch.load_model(uri, map_location="cpu").to(device)
            return entry.load()(models.predict_proba(champion, x_test), y_test, p["ece_bins"])[metric]

        gate_decision = check_gate(results["student"], gate)
        dirty = (f"trained on data/ as it was, not a recorded version (distillery.data_dirty; it hashed to "
                 f"{ctx.data_content_hash[:12]})") if ctx.data_dirty else None
        decision = register_and_promote(client, student_info.model_uri, name, metric,
                                        results["student"][metric], score, ctx.tags(), gate_decision,
                                        gate["beat_champion"], never_promote=dirty)
        mlflow.log_dict({**gate_decision.to_dict(), "gate": gate, "promoted": decision.promoted,
                         "decision": decision.reason, "registered_model": name, "version": decision.version,
                         "metrics": results["student"]}, "gate_reasons.json")
        mlflow.set_tags({"promotion": decision.reason, "registered_model": f"{name} v{decision.version}",
                         "gate": "passed" if gate_decision.passed else "failed"})
        client.set_tag(parent, "promotion", decision.reason)
        outcome = (f"teacher accuracy {results['teacher']['accuracy']:.4f}, "
                   f"student {results['student']['accuracy']:.4f} "
                   f"({ratio:.1%} of the teacher); {name} v{decision.version}: {decision.reason}.")
        progress(outcome)
    finish_parent(ctx, outcome)


def registered_model_name(eval_params: dict, meta: dict) -> str:
    """The registry name students are registered under: ``model_name``, else one per dataset."""
    return eval_params.get("model_name") or f"distillery-{meta['name']}-student"




def run_retraining_check(context: str, run_key: str, params: str) -> str:
    """First task of the retraining pipeline: the run context pinned to the newest data version when
    it retrains, else :data:`SKIP` (and the pipeline run is finished with the reason as its description)."""
    import json

    import numpy as np

    import mlflow
    from distillery.components.core.datasets import (
        LabelledData,
        data_version,
        read_dataset,
    )
    from distillery.components.core.tracking import RunContext, task_run
    from distillery.components.evaluation import retraining
    from distillery.components.evaluation.drift import detect_drift

    ctx = RunContext.from_json(context)
    ctx.run_key = run_key
    settings = json.loads(params)
    data = dict(ctx.data)
    rev = retraining.pin_revision(data["repo"], data.get("rev"))
    ctx.config = {**ctx.config, "data": {**data, "rev": rev}}
    ctx.data_version = data_version(data["repo"], rev)

    def load(at_rev: str | None) -> LabelledData:
        features, labels, meta = read_dataset(data["repo"], data["path"], at_rev)
        return LabelledData(features, labels, np.arange(len(labels)), meta)

    with task_run(ctx, "check-retraining", settings):
        progress(f"newest data: {data['path']} @ {rev or 'working tree'} (version {ctx.data_version[:12]})")
        current = load(rev)
        name = registered_model_name(ctx.config["evaluation"]["params"], current.meta)
        champion = retraining.champion_info(mlflow.MlflowClient(ctx.tracking_uri), name)
        new_labels = drift = None
        if champion is not None and champion.data_version != ctx.data_version:
            reference_rev = retraining.revision_of_version(data["repo"], champion.data_version, champion.git_commit)
            if reference_rev is not None:
                reference = load(reference_rev)
                new_labels = (retraining.label_count(data["repo"], data["path"], rev, current)
                              - retraining.label_count(data["repo"], data["path"], reference_rev, reference))
                drift = detect_drift(reference, current, alpha=settings["drift_alpha"], seed=ctx.seed)
                mlflow.log_dict(drift.to_dict(), "drift.json")
                mlflow.log_metrics({"new_labels": new_labels, "drifted": float(drift.drifted)})
        decision = retraining.decide(champion, ctx.data_version, new_labels, drift, settings["min_new_labels"],
                                     settings["retrain_on_drift"])
        mlflow.log_dict({"retrain": decision.retrain, "reason": decision.reason,
                         "champion": champion.__dict__ if champion else None}, "retraining_decision.json")
        mlflow.set_tags({"retrain": str(decision.retrain).lower(), "retrain_reason": decision.reason})
        mlflow.MlflowClient(ctx.tracking_uri).set_tag(parent_run_id(ctx), "retrain_reason", decision.reason)
        progress(f"{'retraining' if decision.retrain else 'skipping'}: {decision.reason}")
    if not decision.retrain:
        finish_parent(ctx, f"skipped, nothing to retrain: {decision.reason}.")
        return SKIP
    return ctx.to_json()


DOMAIN_KEYS = {"name", "rotate", "noise"}


def check_ood_params(p: dict) -> tuple[dict[str, str], list[dict]]:
    """Candidates (label -> MLflow model URI) and domain specs of the ``ood_selection`` params; a
    ``ValueError`` naming the offending entry."""
    candidates, domains = p["candidates"], p["domains"]
    if not isinstance(candidates, dict) or not all(isinstance(v, str) for v in candidates.values()):
        raise ValueError(f"ood_selection candidates must map labels to MLflow model URIs, got {candidates!r}")
    clash = sorted({"teacher", "student"} & set(candidates))
    if clash:
        raise ValueError(f"ood_selection candidate label(s) {clash} are taken by the pipeline's own models")
    if not isinstance(domains, list) or len(domains) < 2:
        raise ValueError(f"ood_selection needs a list of at least 2 training domains, got {domains!r}")
    for spec in domains:
        if not isinstance(spec, dict) or "name" not in spec or set(spec) - DOMAIN_KEYS:
            raise ValueError(f"domain {spec!r}: expected a mapping with 'name' and optionally 'rotate' (degrees) "
                             f"and 'noise' (std as a fraction of the value range); allowed keys {sorted(DOMAIN_KEYS)}")
    names = [spec["name"] for spec in domains]
    if len(set(names)) != len(names):
        raise ValueError(f"domain names must be unique, got {names}")
    return candidates, domains


def run_ood_selection(method: str, context: str, run_key: str, params: str, dataset: str, splits: str,
                      teacher: str, student: str) -> None:
    """OOD model selection (Ye et al., NeurIPS 2021) among the pipeline's teacher and student and any
    models named in ``params.candidates`` (label -> MLflow model URI, e.g. ``models:/NAME/3``: a
    variable number of models cannot be KFP input artifacts, so extra candidates travel as URIs).

    Training domains are the test split under each ``params.domains`` transform
    (``{"name", "rotate": degrees, "noise": std / value range}``). Logs the per-candidate table
    (``ood_selection.json``), V_j and I_j per feature per candidate (``ood_features/<label>.json``
    and a figure), and the pick as the tag ``ood_selected``. It registers and promotes nothing.
    """
    import mlflow
    from distillery.components.core import models, plots
    from distillery.components.evaluation.ood_selection import (
        check_domains,
        make_domain,
    )

    with method_task("evaluation", method, context, run_key, params) as (ctx, entry, p):
        candidates, specs = check_ood_params(p)
        data, split = load_labelled(dataset), load_arrays(splits)
        rows = split["test_rows"]
        check_domains({spec["name"]: data.labels[rows] for spec in specs})
        domains = {spec["name"]: (make_domain(data.features[rows], data.meta, spec.get("rotate", 0.0),
                                              spec.get("noise", 0.0), seed=ctx.seed + i), data.labels[rows])
                   for i, spec in enumerate(specs)}
        fitted = {"teacher": models.load(teacher), "student": models.load(student)}
        fitted.update({label: mlflow.pytorch.load_model(uri) for label, uri in candidates.items()})
        progress(f"OOD selection among {sorted(fitted)} on training domains {sorted(domains)}")
        selection, stats = entry.load()(fitted, domains, threshold=p["informative_threshold"],
                                        tolerance=p["tolerance"], grid_size=p["grid_size"],
                                        max_per_group=p["max_per_group"], seed=ctx.seed)
        for row in selection.table:
            label = row["candidate"]
            mlflow.log_metrics({f"{label}_val_accuracy": row["accuracy"], f"{label}_variation": row["variation"]})
            mlflow.log_dict(stats[label].to_dict(), f"ood_features/{label}.json")
            figure = plots.feature_variation_figure(stats[label].variation, stats[label].informativeness,
                                                    p["informative_threshold"], f"{label}: penultimate features")
            plots.log_figure(figure, f"ood_features/{label}.png")
        mlflow.log_dict({**selection.to_dict(), "candidates": {"teacher": "pipeline teacher",
                                                               "student": "pipeline student", **candidates},
                         "domains": specs}, "ood_selection.json")
        mlflow.set_tag("ood_selected", selection.selected)
        client = mlflow.MlflowClient()
        client.set_tag(parent_run_id(ctx), "ood_selected", selection.selected)
        lines = [f"{r['candidate']:>12}  acc {r['accuracy']:.4f}  V {r['variation']:.4f}  "
                 f"score {'-' if r['score'] is None else format(r['score'], '.4f')}" for r in selection.table]
        progress("\n".join(lines))
        outcome = (f"OOD selection (r = {selection.r:.3f}) picks {selection.selected} among "
                   f"{len(selection.table)} candidates on domains {list(domains)}.")
        progress(outcome)
    finish_parent(ctx, outcome)


