"""KFP component of the evaluation stage's signature: teacher and student in; metrics, figures and the gated
promotion logged.

One component serves every evaluation method: ``distillery.pipelines.components`` derives each
method's own component from it (named after the method, ``method`` fixed to its name), so adding a
method needs no code here.
"""
from kfp import dsl
from kfp.dsl import Dataset, Input, Model

from distillery.components.core.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(method: str, context: str, run_key: str, params: str, dataset: Input[Dataset], splits: Input[Dataset],
             teacher: Input[Model], student: Input[Model]):
    """Candidates beyond the pipeline's teacher and student (``ood_selection``) come as MLflow model
    URIs in ``params.candidates``: a variable number of input artifacts is not expressible in KFP."""
    from distillery.components.evaluation.tasks import run_evaluation

    run_evaluation(method, context, run_key, params, dataset.path, splits.path, teacher.path, student.path)


component = evaluate  # the stage's component, as the registry finds it


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def check_retraining(context: str, run_key: str, params: str) -> str:
    """Not a method: the retraining pipeline's first step. The run context pinned to the newest data
    version, or ``distillery.components.core.tracking.SKIP``. (One string output: kfp.local
    2.17 cannot branch on one field of a NamedTuple output.)"""
    from distillery.components.evaluation.tasks import run_retraining_check

    return run_retraining_check(context, run_key, params)
