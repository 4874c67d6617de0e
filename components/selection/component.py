"""KFP component of the selection stage's signature: the round's teacher and pool in, the selected batch out.

One component serves every selection method: ``distillery.pipelines.components`` derives each
method's own component from it (named after the method, ``method`` fixed to its name), so adding a
method needs no code here.
"""
from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from distillery.components.core.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def select(method: str, context: str, run_key: str, params: str, round_index: int, batch_size: int,
           dataset: Input[Dataset], splits: Input[Dataset], labelled: Input[Dataset], model: Input[Model],
           selected: Output[Dataset]):
    from distillery.components.selection.tasks import run_selection

    run_selection(method, context, run_key, params, round_index, batch_size, dataset.path, splits.path,
                  labelled.path, model.path, selected.path)


component = select  # the stage's component, as the registry finds it
