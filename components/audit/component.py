"""KFP component of the audit stage's signature: a dataset (e.g. a distilled one) and held-out images in;
the audit logged.

One component serves every audit method: ``distillery.pipelines.components`` derives each
method's own component from it (named after the method, ``method`` fixed to its name), so adding a
method needs no code here.
"""
from kfp import dsl
from kfp.dsl import Dataset, Input

from distillery.components.core.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def audit(method: str, context: str, run_key: str, params: str, dataset: Input[Dataset], test: Input[Dataset]):
    """``test`` holds held-out real images (a LabelledData artifact) to measure on."""
    from distillery.components.audit.tasks import run_audit

    run_audit(method, context, run_key, params, dataset.path, test.path)


component = audit  # the stage's component, as the registry finds it
