"""KFP component of the distillation stage's signature: the final teacher in, the compact student out.

One component serves every distillation method: ``distillery.pipelines.components`` derives each
method's own component from it (named after the method, ``method`` fixed to its name), so adding a
method needs no code here.
"""
from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from distillery.components.core.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def distil(method: str, context: str, run_key: str, params: str, dataset: Input[Dataset], splits: Input[Dataset],
           labelled: Input[Dataset], teacher: Input[Model], student: Output[Model]):
    from distillery.components.distillation.tasks import run_distillation

    run_distillation(method, context, run_key, params, dataset.path, splits.path, labelled.path, teacher.path,
                     student.path)


component = distil  # the stage's component, as the registry finds it
