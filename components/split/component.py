"""KFP component of the split stage's signature: dataset in; splits and seed labels out.

One component serves every split method: ``distillery.pipelines.components`` derives each
method's own component from it (named after the method, ``method`` fixed to its name), so adding a
method needs no code here.
"""
from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from distillery.components.core.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def split(method: str, context: str, run_key: str, params: str, dataset: Input[Dataset], splits: Output[Dataset],
          labelled: Output[Dataset]):
    from distillery.components.split.tasks import run_split

    run_split(method, context, run_key, params, dataset.path, splits.path, labelled.path)


component = split  # the stage's component, as the registry finds it
