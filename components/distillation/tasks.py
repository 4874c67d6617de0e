"""Task body of the distillation stage.
The method's call and its result: the stage contract, :mod:`distillery.components.distillation.contract`."""
from __future__ import annotations

from distillery.components.core.datasets import (
    load_arrays,
    load_labelled,
    unlabelled_rows,
)
from distillery.components.core.tracking import method_task, progress

STUDENT_ARCH = "student"  # the parameter naming the student's architecture (a model zoo name)
STUDENT_KWARGS = "student_kwargs"  # keyword arguments of that architecture, e.g. {"channels": 4}
# Top-level shorthands for architecture keywords (``hidden: 40``), passed to architectures that take them.
STUDENT_ARCH_KEYS = ("hidden", "input_proxy")


def method_params(params: dict) -> dict:
    """The parameters a distillation method takes by keyword: all but the student architecture's."""
    return {k: v for k, v in params.items() if k not in (STUDENT_ARCH, STUDENT_KWARGS, *STUDENT_ARCH_KEYS)}


def student_arch_kwargs(params: dict) -> dict:
    """Keyword arguments of the student's architecture: the shorthands it accepts, then ``student_kwargs``."""
    import inspect

    from distillery.components.core import models

    builder = models.ARCHITECTURES.get(params[STUDENT_ARCH])
    accepted = [*inspect.signature(builder).parameters, *models.BUILD_KEYWORDS] if builder else []
    return {**{k: params[k] for k in STUDENT_ARCH_KEYS if k in params and k in accepted},
            **(params.get(STUDENT_KWARGS) or {})}


def run_distillation(method: str, context: str, run_key: str, params: str, dataset: str, splits: str, labelled: str,
                     teacher: str, student_out: str) -> None:
    import numpy as np

    import mlflow
    from distillery.components.core import devices, models
    from distillery.components.core.datasets import dataset_file_reader
    from distillery.components.core.export import check_exportable
    from distillery.components.distillation.common import check_compatible
    from distillery.components.distillation.hinton_kd import make_student
    from distillery.components.distillation.reliant import sensitive_groups

    with method_task("distillation", method, context, run_key, params) as (ctx, entry, p):
        data, split, labels = load_labelled(dataset), load_arrays(splits), load_arrays(labelled)
        device = devices.current().device  # teacher and student train there; the data moves batch by batch
        teacher_model = models.load(teacher).to(device)
        arch_kwargs = student_arch_kwargs(p)
        pool = unlabelled_rows(split, labels)
        # a table's student standardises its features by the data it learns from: labelled + pool
        student = models.standardise(make_student(p["student"], data.meta, arch_kwargs, ctx.seed),
                                     data.features[np.concatenate([labels["rows"], pool])]).to(device)
        # mismatched classes or feature counts: a clear error before any training time is spent
        check_compatible(teacher_model, student, data.features.shape[1], len(data.meta["classes"]), labels["labels"])
        check_exportable(student)  # the deployable student must export to ONNX: fail before training
        kwargs = method_params(p)
        if "sensitive" in entry.inputs:  # fair distillation (RELIANT): each item's group, labelled then pool
            rows = np.concatenate([labels["rows"], pool])
            kwargs["sensitive"] = sensitive_groups(data.meta, data.features[rows], data.ids[rows],
                                                   kwargs.pop("sensitive_attribute"), dataset_file_reader(ctx))
        n_teacher, n_student = models.count_parameters(teacher_model), models.count_parameters(student)
        progress(f"distilling a {n_teacher:,}-parameter teacher into a {n_student:,}-parameter "
                 f"{p['student']} ({n_teacher / n_student:.1f}x smaller) on {len(labels['rows'])} labelled "
                 f"+ {len(pool)} unlabelled items")
        epochs = p["epochs"]

        def on_epoch(epoch: int, loss: float) -> None:
            mlflow.log_metric("distillation_loss", loss, step=epoch)
            if (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
                progress(f"distillation epoch {epoch + 1} loss {loss:.4f}")  # multi-stage methods run more

        student = entry.load()(teacher_model, student, data.features[labels["rows"]], labels["labels"],
                               data.features[pool], seed=ctx.seed, on_epoch=on_epoch, **kwargs)
        mlflow.log_metrics({"teacher_parameters": n_teacher, "student_parameters": n_student,
                            "compression": n_teacher / n_student,
                            **{f"{role}_flops": models.count_flops(m, data.features.shape[1:])
                               for role, m in (("teacher", teacher_model), ("student", student))}})
        models.save(student, student_out, p["student"], data.meta, arch_kwargs)


