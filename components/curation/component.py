"""KFP component of the curation stage's signature: a dataset version, validated and cleaned.

One component serves every curation method: ``distillery.pipelines.components`` derives each
method's own component from it (named after the method, ``method`` fixed to its name), so adding a
method needs no code here.
"""
from kfp import dsl
from kfp.dsl import Dataset, Output

from distillery.components.core.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def curate(method: str, context: str, run_key: str, params: str, dataset: Output[Dataset]):
    from distillery.components.curation.tasks import run_curation

    run_curation(method, context, run_key, params, dataset.path)


component = curate  # the stage's component, as the registry finds it
