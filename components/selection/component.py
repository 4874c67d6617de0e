"""KFP components of the selection stage (one per strategy) and of labelling (one per annotator)."""
from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def select_random(context: str, run_key: str, params: str, round_index: int, batch_size: int, dataset: Input[Dataset],
                  splits: Input[Dataset], labelled: Input[Dataset], model: Input[Model], selected: Output[Dataset]):
    from components.selection.tasks import run_selection

    run_selection("random", context, run_key, params, round_index, batch_size, dataset.path, splits.path,
                  labelled.path, model.path, selected.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def select_entropy(context: str, run_key: str, params: str, round_index: int, batch_size: int, dataset: Input[Dataset],
                   splits: Input[Dataset], labelled: Input[Dataset], model: Input[Model], selected: Output[Dataset]):
    from components.selection.tasks import run_selection

    run_selection("entropy", context, run_key, params, round_index, batch_size, dataset.path, splits.path,
                  labelled.path, model.path, selected.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def select_margin(context: str, run_key: str, params: str, round_index: int, batch_size: int, dataset: Input[Dataset],
                  splits: Input[Dataset], labelled: Input[Dataset], model: Input[Model], selected: Output[Dataset]):
    from components.selection.tasks import run_selection

    run_selection("margin", context, run_key, params, round_index, batch_size, dataset.path, splits.path,
                  labelled.path, model.path, selected.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def label_simulated(context: str, run_key: str, params: str, round_index: int, dataset: Input[Dataset],
                    labelled: Input[Dataset], selected: Input[Dataset], labelled_out: Output[Dataset]):
    from components.selection.tasks import run_labelling

    run_labelling("simulated", context, run_key, params, round_index, dataset.path, labelled.path, selected.path,
                  labelled_out.path)
