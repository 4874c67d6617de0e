"""KFP component of the dataset_distillation stage's signature: a dataset in, a small synthetic one out.

One component serves every dataset_distillation method: ``distillery.pipelines.components`` derives each
method's own component from it (named after the method, ``method`` fixed to its name), so adding a
method needs no code here.
"""
from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from distillery.components.core.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def distil_data(method: str, context: str, run_key: str, params: str, dataset: Input[Dataset],
                synthetic: Output[Dataset]):
    from distillery.components.dataset_distillation.tasks import run_dataset_distillation

    run_dataset_distillation(method, context, run_key, params, dataset.path, synthetic.path)


component = distil_data  # the stage's component, as the registry finds it
