"""KFP components of the curation stage: thin adapters around ``components.curation.tasks``."""
from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def curate_gx_dedup(context: str, run_key: str, params: str, dataset: Output[Dataset]):
    from components.curation.tasks import run_curation

    run_curation("gx_dedup", context, run_key, params, dataset.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def curate_gx_suite(context: str, run_key: str, params: str, dataset: Output[Dataset]):
    from components.curation.tasks import run_curation

    run_curation("gx_suite", context, run_key, params, dataset.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def split_stratified(context: str, run_key: str, params: str, dataset: Input[Dataset], splits: Output[Dataset],
                     labelled: Output[Dataset]):
    from components.curation.tasks import run_split

    run_split("stratified", context, run_key, params, dataset.path, splits.path, labelled.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def curate_step_quality_filter(context: str, run_key: str, params: str, dataset: Input[Dataset], curated: Output[Dataset]):
    from components.curation.tasks import run_curation_step

    run_curation_step("quality_filter", context, run_key, params, dataset.path, curated.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def curate_step_consensus(context: str, run_key: str, params: str, dataset: Input[Dataset], curated: Output[Dataset]):
    from components.curation.tasks import run_curation_step

    run_curation_step("consensus", context, run_key, params, dataset.path, curated.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def curate_step_info_gain(context: str, run_key: str, params: str, dataset: Input[Dataset], curated: Output[Dataset]):
    from components.curation.tasks import run_curation_step

    run_curation_step("info_gain", context, run_key, params, dataset.path, curated.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def curate_step_ppp(context: str, run_key: str, params: str, dataset: Input[Dataset], curated: Output[Dataset]):
    from components.curation.tasks import run_curation_step

    run_curation_step("ppp", context, run_key, params, dataset.path, curated.path)
