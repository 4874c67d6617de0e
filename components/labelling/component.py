"""KFP component of the labelling stage's signature: the selected batch in, the grown labelled set out.

One component serves every labelling method: ``distillery.pipelines.components`` derives each
method's own component from it (named after the method, ``method`` fixed to its name), so adding a
method needs no code here.
"""
from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from distillery.components.core.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def label(method: str, context: str, run_key: str, params: str, round_index: int, dataset: Input[Dataset],
          labelled: Input[Dataset], selected: Input[Dataset], labelled_out: Output[Dataset]):
    from distillery.components.labelling.tasks import run_labelling

    run_labelling(method, context, run_key, params, round_index, dataset.path, labelled.path, selected.path,
                  labelled_out.path)


component = label  # the stage's component, as the registry finds it
