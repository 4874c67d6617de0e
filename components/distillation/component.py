"""KFP components of the distillation stage."""
from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def distil_hinton_kd(context: str, run_key: str, params: str, dataset: Input[Dataset], splits: Input[Dataset],
                     labelled: Input[Dataset], teacher: Input[Model], student: Output[Model]):
    from components.distillation.tasks import run_distillation

    run_distillation("hinton_kd", context, run_key, params, dataset.path, splits.path, labelled.path, teacher.path,
                     student.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def distil_fitnets(context: str, run_key: str, params: str, dataset: Input[Dataset], splits: Input[Dataset],
                   labelled: Input[Dataset], teacher: Input[Model], student: Output[Model]):
    from components.distillation.tasks import run_distillation

    run_distillation("fitnets", context, run_key, params, dataset.path, splits.path, labelled.path, teacher.path,
                     student.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def distil_lead(context: str, run_key: str, params: str, dataset: Input[Dataset], splits: Input[Dataset],
                labelled: Input[Dataset], teacher: Input[Model], student: Output[Model]):
    from components.distillation.tasks import run_distillation

    run_distillation("lead", context, run_key, params, dataset.path, splits.path, labelled.path, teacher.path,
                     student.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def distil_prod(context: str, run_key: str, params: str, dataset: Input[Dataset], splits: Input[Dataset],
                labelled: Input[Dataset], teacher: Input[Model], student: Output[Model]):
    from components.distillation.tasks import run_distillation

    run_distillation("prod", context, run_key, params, dataset.path, splits.path, labelled.path, teacher.path,
                     student.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def distil_reliant(context: str, run_key: str, params: str, dataset: Input[Dataset], splits: Input[Dataset],
                   labelled: Input[Dataset], teacher: Input[Model], student: Output[Model]):
    from components.distillation.tasks import run_distillation

    run_distillation("reliant", context, run_key, params, dataset.path, splits.path, labelled.path, teacher.path,
                     student.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def distil_dataset_dm(context: str, run_key: str, params: str, dataset: Input[Dataset], synthetic: Output[Dataset]):
    from components.distillation.tasks import run_dataset_distillation

    run_dataset_distillation("distribution_matching", context, run_key, params, dataset.path, synthetic.path)
