"""Task body of the training stage: train the teacher on the labelled set of this round."""
from __future__ import annotations

from components.datasets import load_arrays, load_labelled
from components.tracking import method_task, parent_run_id, progress

TRAINING_KEYS = ("epochs", "lr", "batch_size")


def run_training(method: str, context: str, run_key: str, params: str, round_index: int, dataset: str,
                 splits: str, labelled: str, model_out: str) -> None:
    import mlflow

    from components.training import models
    from components.training.train import accuracy

    with method_task("training", method, context, run_key, params, round_index) as (ctx, entry, p):
        data, split, labels = load_labelled(dataset), load_arrays(splits), load_arrays(labelled)
        arch_kwargs = {k: v for k, v in p.items() if k not in TRAINING_KEYS}
        epochs = p["epochs"]

        def on_epoch(epoch: int, loss: float) -> None:
            mlflow.log_metric("train_loss", loss, step=epoch)
            if (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
                progress(f"round {round_index}: epoch {epoch + 1}/{epochs} loss {loss:.4f}")

        model = entry.load()(data.features[labels["rows"]], labels["labels"], data.meta, method, arch_kwargs,
                             epochs, p["lr"], p["batch_size"], ctx.seed + round_index, on_epoch)
        test = split["test_rows"]
        test_accuracy = accuracy(model, data.features[test], data.labels[test])
        n_labels = len(labels["rows"])
        mlflow.log_metrics({"test_accuracy": test_accuracy, "labels": n_labels,
                            "parameters": models.count_parameters(model)})
        # The learning curve: one point per round on the parent run, x = number of labels.
        mlflow.MlflowClient().log_metric(parent_run_id(ctx), "teacher_test_accuracy", test_accuracy, step=n_labels)
        models.save(model, model_out, method, data.meta, arch_kwargs)
        progress(f"round {round_index}: teacher trained on {n_labels} labels, test accuracy {test_accuracy:.4f}")
