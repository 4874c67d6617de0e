"""KFP component of the training stage's signature: the labelled set in, the round's teacher out.

One component serves every training method: ``distillery.pipelines.components`` derives each
method's own component from it (named after the method, ``method`` fixed to its name), so adding a
method needs no code here.
"""
from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from distillery.components.core.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train(method: str, context: str, run_key: str, params: str, round_index: int, dataset: Input[Dataset],
          splits: Input[Dataset], labelled: Input[Dataset], model: Output[Model]):
    from distillery.components.training.tasks import run_training

    run_training(method, context, run_key, params, round_index, dataset.path, splits.path, labelled.path,
                 model.path)


component = train  # the stage's component, as the registry finds it
