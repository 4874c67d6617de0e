"""Task body of the evaluation stage: metrics, figures, model logging and promotion, then the
parent run is closed with a readable outcome."""
from __future__ import annotations

from components.datasets import load_arrays, load_labelled
from components.tracking import finish_parent, method_task, parent_run_id, progress


def log_model(model, name: str, example):
    """Log a PyTorch model with signature and input example; the requirement is pinned to the
    running torch so MLflow does not spend seconds inferring it. Pickle format: MLflow 3's default
    ``pt2`` export fixes the batch size to the input example's, so the served model would reject
    any other batch size."""
    import mlflow
    import torch
    from mlflow.models import infer_signature

    with torch.no_grad():
        output = model(torch.as_tensor(example)).numpy()
    return mlflow.pytorch.log_model(model, name=name, signature=infer_signature(example, output),
                                    input_example=example, pip_requirements=[f"torch=={torch.__version__}"],
                                    serialization_format="pickle")


def run_evaluation(method: str, context: str, run_key: str, params: str, dataset: str, splits: str, teacher: str,
                   student: str) -> None:
    import mlflow
    import numpy as np

    from components.evaluation import plots
    from components.evaluation.promotion import register_and_promote
    from components.training import models

    with method_task("evaluation", method, context, run_key, params) as (ctx, entry, p):
        data, split = load_labelled(dataset), load_arrays(splits)
        test = split["test_rows"]
        x_test, y_test = data.features[test], data.labels[test]
        client = mlflow.MlflowClient()
        parent = parent_run_id(ctx)
        results, fitted = {}, {"teacher": models.load(teacher), "student": models.load(student)}
        for role, model in fitted.items():
            probs = models.predict_proba(model, x_test)
            metrics = entry.load()(probs, y_test, p["ece_bins"])
            results[role] = metrics
            for key, value in {**metrics, "parameters": models.count_parameters(model)}.items():
                mlflow.log_metric(f"{role}_{key}", value)
                client.log_metric(parent, f"{role}_{key}", value)
            mlflow.log_figure(plots.confusion_matrix_figure(y_test, probs.argmax(-1).numpy(), data.meta["classes"],
                                                            f"{role} confusion matrix (test split)"),
                              f"{role}_confusion_matrix.png")
        ratio = results["student"]["accuracy"] / results["teacher"]["accuracy"]
        client.log_metric(parent, "student_to_teacher_accuracy", ratio)
        history = sorted(client.get_metric_history(parent, "teacher_test_accuracy"), key=lambda m: m.step)
        curve = plots.learning_curve_figure([m.step for m in history], [m.value for m in history],
                                            {"final teacher": results["teacher"]["accuracy"],
                                             "student": results["student"]["accuracy"]})
        mlflow.log_figure(curve, "learning_curve.png")
        client.log_figure(parent, curve, "learning_curve.png")

        example = np.ascontiguousarray(x_test[:5], dtype=np.float32)
        log_model(fitted["teacher"], "teacher", example)
        student_info = log_model(fitted["student"], "student", example)
        metric = p["metric"]
        name = p["model_name"] or f"distillery-{data.meta['name']}-student"

        def score(uri: str) -> float:
            return entry.load()(models.predict_proba(mlflow.pytorch.load_model(uri), x_test), y_test,
                                p["ece_bins"])[metric]

        decision = register_and_promote(client, student_info.model_uri, name, metric,
                                        results["student"][metric], score, ctx.tags())
        mlflow.set_tags({"promotion": decision.reason, "registered_model": f"{name} v{decision.version}"})
        client.set_tag(parent, "promotion", decision.reason)
        outcome = (f"teacher accuracy {results['teacher']['accuracy']:.4f}, student {results['student']['accuracy']:.4f} "
                   f"({ratio:.1%} of the teacher); {name} v{decision.version}: {decision.reason}.")
        progress(outcome)
    finish_parent(ctx, outcome)
