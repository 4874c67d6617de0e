"""KFP component of the curation_step stage's signature: curated dataset in, a new curated version out.

One component serves every curation_step method: ``distillery.pipelines.components`` derives each
method's own component from it (named after the method, ``method`` fixed to its name), so adding a
method needs no code here.
"""
from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from distillery.components.core.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def curate_step(method: str, context: str, run_key: str, params: str, dataset: Input[Dataset],
                curated: Output[Dataset]):
    from distillery.components.curation_step.tasks import run_curation_step

    run_curation_step(method, context, run_key, params, dataset.path, curated.path)


component = curate_step  # the stage's component, as the registry finds it
