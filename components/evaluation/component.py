"""KFP components of the evaluation stage."""
from kfp import dsl
from kfp.dsl import Dataset, Input, Model

from components.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_classification(context: str, run_key: str, params: str, dataset: Input[Dataset], splits: Input[Dataset],
                            teacher: Input[Model], student: Input[Model]):
    from components.evaluation.tasks import run_evaluation

    run_evaluation("classification", context, run_key, params, dataset.path, splits.path, teacher.path, student.path)
