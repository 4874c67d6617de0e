"""KFP components of the evaluation stage."""
from kfp import dsl
from kfp.dsl import Dataset, Input, Model

from components.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_classification(context: str, run_key: str, params: str, dataset: Input[Dataset], splits: Input[Dataset],
                            teacher: Input[Model], student: Input[Model]):
    from components.evaluation.tasks import run_evaluation

    run_evaluation("classification", context, run_key, params, dataset.path, splits.path, teacher.path, student.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_ood_selection(context: str, run_key: str, params: str, dataset: Input[Dataset], splits: Input[Dataset],
                           teacher: Input[Model], student: Input[Model]):
    """The evaluation stage's signature, so a config can pick it; candidates beyond the pipeline's
    teacher and student come as MLflow model URIs in ``params.candidates`` (a variable number of
    input artifacts is not expressible in KFP)."""
    from components.evaluation.tasks import run_ood_selection

    run_ood_selection("ood_selection", context, run_key, params, dataset.path, splits.path, teacher.path,
                      student.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def check_retraining(context: str, run_key: str, params: str) -> str:
    """The run context pinned to the newest data version, or ``"skip"``. (One string output: kfp.local
    2.17 cannot branch on one field of a NamedTuple output.)"""
    from components.evaluation.tasks import run_retraining_check

    return run_retraining_check(context, run_key, params)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_backdoor_audit(context: str, run_key: str, params: str, dataset: Input[Dataset], test: Input[Dataset]):
    """Backdoor audit of ``dataset`` (e.g. a distilled set from ``distil_dataset_dm``); ``test`` holds
    held-out real images (a LabelledData artifact) to measure clean accuracy and ASR on. Not the
    pipeline's evaluation signature: it audits a dataset, not the teacher and student."""
    from components.evaluation.tasks import run_backdoor_audit

    run_backdoor_audit("backdoor_audit", context, run_key, params, dataset.path, test.path)
