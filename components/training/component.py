"""KFP components of the training stage."""
from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_small_cnn(context: str, run_key: str, params: str, round_index: int, dataset: Input[Dataset], splits: Input[Dataset],
                    labelled: Input[Dataset], model: Output[Model]):
    from components.training.tasks import run_training

    run_training("small_cnn", context, run_key, params, round_index, dataset.path, splits.path, labelled.path, model.path)
