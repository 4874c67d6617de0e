"""KFP components of the selection stage (one per strategy) and of labelling (one per annotator).

Each is a thin adapter: the body imports the task code and passes artifact paths through; the
strategy itself is looked up by name in the registry.
"""
from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def select_random(context: str, run_key: str, params: str, round_index: int, batch_size: int,
                  dataset: Input[Dataset], splits: Input[Dataset], labelled: Input[Dataset], model: Input[Model],
                  selected: Output[Dataset]):
    from components.selection.tasks import run_selection

    run_selection("random", context, run_key, params, round_index, batch_size, dataset.path, splits.path,
                  labelled.path, model.path, selected.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def select_least_confidence(context: str, run_key: str, params: str, round_index: int, batch_size: int,
                            dataset: Input[Dataset], splits: Input[Dataset], labelled: Input[Dataset], model: Input[Model],
                            selected: Output[Dataset]):
    from components.selection.tasks import run_selection

    run_selection("least_confidence", context, run_key, params, round_index, batch_size, dataset.path, splits.path,
                  labelled.path, model.path, selected.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def select_entropy(context: str, run_key: str, params: str, round_index: int, batch_size: int,
                   dataset: Input[Dataset], splits: Input[Dataset], labelled: Input[Dataset], model: Input[Model],
                   selected: Output[Dataset]):
    from components.selection.tasks import run_selection

    run_selection("entropy", context, run_key, params, round_index, batch_size, dataset.path, splits.path,
                  labelled.path, model.path, selected.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def select_margin(context: str, run_key: str, params: str, round_index: int, batch_size: int,
                  dataset: Input[Dataset], splits: Input[Dataset], labelled: Input[Dataset], model: Input[Model],
                  selected: Output[Dataset]):
    from components.selection.tasks import run_selection

    run_selection("margin", context, run_key, params, round_index, batch_size, dataset.path, splits.path,
                  labelled.path, model.path, selected.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def select_bald(context: str, run_key: str, params: str, round_index: int, batch_size: int,
                dataset: Input[Dataset], splits: Input[Dataset], labelled: Input[Dataset], model: Input[Model],
                selected: Output[Dataset]):
    from components.selection.tasks import run_selection

    run_selection("bald", context, run_key, params, round_index, batch_size, dataset.path, splits.path,
                  labelled.path, model.path, selected.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def select_badge(context: str, run_key: str, params: str, round_index: int, batch_size: int,
                 dataset: Input[Dataset], splits: Input[Dataset], labelled: Input[Dataset], model: Input[Model],
                 selected: Output[Dataset]):
    from components.selection.tasks import run_selection

    run_selection("badge", context, run_key, params, round_index, batch_size, dataset.path, splits.path,
                  labelled.path, model.path, selected.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def select_coreset(context: str, run_key: str, params: str, round_index: int, batch_size: int,
                   dataset: Input[Dataset], splits: Input[Dataset], labelled: Input[Dataset], model: Input[Model],
                   selected: Output[Dataset]):
    from components.selection.tasks import run_selection

    run_selection("coreset", context, run_key, params, round_index, batch_size, dataset.path, splits.path,
                  labelled.path, model.path, selected.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def select_expected_gradnorm(context: str, run_key: str, params: str, round_index: int, batch_size: int,
                             dataset: Input[Dataset], splits: Input[Dataset], labelled: Input[Dataset], model: Input[Model],
                             selected: Output[Dataset]):
    from components.selection.tasks import run_selection

    run_selection("expected_gradnorm", context, run_key, params, round_index, batch_size, dataset.path, splits.path,
                  labelled.path, model.path, selected.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def select_entropy_gradnorm(context: str, run_key: str, params: str, round_index: int, batch_size: int,
                            dataset: Input[Dataset], splits: Input[Dataset], labelled: Input[Dataset], model: Input[Model],
                            selected: Output[Dataset]):
    from components.selection.tasks import run_selection

    run_selection("entropy_gradnorm", context, run_key, params, round_index, batch_size, dataset.path, splits.path,
                  labelled.path, model.path, selected.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def select_anchoral(context: str, run_key: str, params: str, round_index: int, batch_size: int,
                    dataset: Input[Dataset], splits: Input[Dataset], labelled: Input[Dataset], model: Input[Model],
                    selected: Output[Dataset]):
    from components.selection.tasks import run_selection

    run_selection("anchoral", context, run_key, params, round_index, batch_size, dataset.path, splits.path,
                  labelled.path, model.path, selected.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def select_softmax_sampling(context: str, run_key: str, params: str, round_index: int, batch_size: int,
                            dataset: Input[Dataset], splits: Input[Dataset], labelled: Input[Dataset], model: Input[Model],
                            selected: Output[Dataset]):
    from components.selection.tasks import run_selection

    run_selection("softmax_sampling", context, run_key, params, round_index, batch_size, dataset.path, splits.path,
                  labelled.path, model.path, selected.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def select_power_sampling(context: str, run_key: str, params: str, round_index: int, batch_size: int,
                          dataset: Input[Dataset], splits: Input[Dataset], labelled: Input[Dataset], model: Input[Model],
                          selected: Output[Dataset]):
    from components.selection.tasks import run_selection

    run_selection("power_sampling", context, run_key, params, round_index, batch_size, dataset.path, splits.path,
                  labelled.path, model.path, selected.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def select_softrank_sampling(context: str, run_key: str, params: str, round_index: int, batch_size: int,
                             dataset: Input[Dataset], splits: Input[Dataset], labelled: Input[Dataset], model: Input[Model],
                             selected: Output[Dataset]):
    from components.selection.tasks import run_selection

    run_selection("softrank_sampling", context, run_key, params, round_index, batch_size, dataset.path, splits.path,
                  labelled.path, model.path, selected.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def select_neuronal_pool(context: str, run_key: str, params: str, round_index: int, batch_size: int,
                         dataset: Input[Dataset], splits: Input[Dataset], labelled: Input[Dataset], model: Input[Model],
                         selected: Output[Dataset]):
    from components.selection.tasks import run_selection

    run_selection("neuronal_pool", context, run_key, params, round_index, batch_size, dataset.path, splits.path,
                  labelled.path, model.path, selected.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def select_neuronal_stream(context: str, run_key: str, params: str, round_index: int, batch_size: int,
                           dataset: Input[Dataset], splits: Input[Dataset], labelled: Input[Dataset], model: Input[Model],
                           selected: Output[Dataset]):
    from components.selection.tasks import run_selection

    run_selection("neuronal_stream", context, run_key, params, round_index, batch_size, dataset.path, splits.path,
                  labelled.path, model.path, selected.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def select_stream(context: str, run_key: str, params: str, round_index: int, batch_size: int,
                  dataset: Input[Dataset], splits: Input[Dataset], labelled: Input[Dataset], model: Input[Model],
                  selected: Output[Dataset]):
    from components.selection.tasks import run_selection

    run_selection("stream", context, run_key, params, round_index, batch_size, dataset.path, splits.path,
                  labelled.path, model.path, selected.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def label_simulated(context: str, run_key: str, params: str, round_index: int, dataset: Input[Dataset],
                    labelled: Input[Dataset], selected: Input[Dataset], labelled_out: Output[Dataset]):
    from components.selection.tasks import run_labelling

    run_labelling("simulated", context, run_key, params, round_index, dataset.path, labelled.path, selected.path,
                  labelled_out.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def label_label_studio(context: str, run_key: str, params: str, round_index: int, dataset: Input[Dataset],
                       labelled: Input[Dataset], selected: Input[Dataset], labelled_out: Output[Dataset]):
    from components.selection.tasks import run_labelling

    run_labelling("label_studio", context, run_key, params, round_index, dataset.path, labelled.path, selected.path,
                  labelled_out.path)
