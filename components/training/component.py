"""KFP components of the training stage."""
from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_small_cnn(context: str, run_key: str, params: str, round_index: int, dataset: Input[Dataset], splits: Input[Dataset],
                    labelled: Input[Dataset], model: Output[Model]):
    from components.training.tasks import run_training

    run_training("small_cnn", context, run_key, params, round_index, dataset.path, splits.path, labelled.path, model.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_supervised(context: str, run_key: str, params: str, round_index: int, dataset: Input[Dataset],
                     splits: Input[Dataset], labelled: Input[Dataset], model: Output[Model]):
    from components.training.tasks import run_training

    run_training("supervised", context, run_key, params, round_index, dataset.path, splits.path, labelled.path,
                 model.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_ddp(context: str, run_key: str, params: str, round_index: int, dataset: Input[Dataset], splits: Input[Dataset],
              labelled: Input[Dataset], model: Output[Model]):
    from components.training.tasks import run_training

    run_training("ddp", context, run_key, params, round_index, dataset.path, splits.path, labelled.path, model.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_adbo_hyperclean(context: str, run_key: str, params: str, round_index: int, dataset: Input[Dataset],
                          splits: Input[Dataset], labelled: Input[Dataset], model: Output[Model]):
    from components.training.tasks import run_training

    run_training("adbo_hyperclean", context, run_key, params, round_index, dataset.path, splits.path, labelled.path,
                 model.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_spsa_finetune(context: str, run_key: str, params: str, round_index: int, dataset: Input[Dataset],
                        splits: Input[Dataset], labelled: Input[Dataset], model: Output[Model]):
    from components.training.tasks import run_training

    run_training("spsa_finetune", context, run_key, params, round_index, dataset.path, splits.path, labelled.path,
                 model.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_federated(context: str, run_key: str, params: str, round_index: int, dataset: Input[Dataset],
                    splits: Input[Dataset], labelled: Input[Dataset], model: Output[Model]):
    from components.training.tasks import run_training

    run_training("federated", context, run_key, params, round_index, dataset.path, splits.path, labelled.path,
                 model.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_fusion(context: str, run_key: str, params: str, round_index: int, dataset: Input[Dataset],
                 splits: Input[Dataset], labelled: Input[Dataset], model: Output[Model]):
    from components.training.tasks import run_training

    run_training("fusion", context, run_key, params, round_index, dataset.path, splits.path, labelled.path,
                 model.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_ddp_trainjob(context: str, run_key: str, params: str, round_index: int, dataset: Input[Dataset],
                       splits: Input[Dataset], labelled: Input[Dataset], model: Output[Model]):
    from components.training.tasks import run_training

    run_training("ddp_trainjob", context, run_key, params, round_index, dataset.path, splits.path, labelled.path,
                 model.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_adbo_job(context: str, run_key: str, params: str, round_index: int, dataset: Input[Dataset],
                   splits: Input[Dataset], labelled: Input[Dataset], model: Output[Model]):
    from components.training.tasks import run_training

    run_training("adbo_job", context, run_key, params, round_index, dataset.path, splits.path, labelled.path,
                 model.path)
