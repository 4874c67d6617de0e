"""Task body of the distillation stage."""
from __future__ import annotations

from components.datasets import load_arrays, load_labelled
from components.selection.tasks import unlabelled_rows
from components.tracking import method_task, progress

STUDENT_ARCH_KEYS = ("hidden",)


def run_distillation(method: str, context: str, run_key: str, params: str, dataset: str, splits: str, labelled: str,
                     teacher: str, student_out: str) -> None:
    import mlflow

    from components.distillation.hinton_kd import make_student
    from components.training import models

    with method_task("distillation", method, context, run_key, params) as (ctx, entry, p):
        data, split, labels = load_labelled(dataset), load_arrays(splits), load_arrays(labelled)
        teacher_model = models.load(teacher)
        arch_kwargs = {k: p[k] for k in STUDENT_ARCH_KEYS if k in p}
        student = make_student(p["student"], data.meta, arch_kwargs, ctx.seed)
        pool = unlabelled_rows(split, labels)
        n_teacher, n_student = models.count_parameters(teacher_model), models.count_parameters(student)
        progress(f"distilling a {n_teacher:,}-parameter teacher into a {n_student:,}-parameter "
                 f"{p['student']} ({n_teacher / n_student:.1f}x smaller) on {len(labels['rows'])} labelled "
                 f"+ {len(pool)} unlabelled items")
        epochs = p["epochs"]

        def on_epoch(epoch: int, loss: float) -> None:
            mlflow.log_metric("distillation_loss", loss, step=epoch)
            if (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
                progress(f"distillation epoch {epoch + 1}/{epochs} loss {loss:.4f}")

        entry.load()(teacher_model, student, data.features[labels["rows"]], labels["labels"], data.features[pool],
                     p["temperature"], p["alpha"], epochs, p["lr"], p["batch_size"], ctx.seed, on_epoch)
        mlflow.log_metrics({"teacher_parameters": n_teacher, "student_parameters": n_student,
                            "compression": n_teacher / n_student})
        models.save(student, student_out, p["student"], data.meta, arch_kwargs)
