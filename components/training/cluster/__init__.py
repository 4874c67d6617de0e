"""Training on Kubernetes: the training stage's methods whose work runs in the cluster.

A pipeline task creates a Kubeflow Trainer ``TrainJob`` (DDP under torchrun; Li et al., "PyTorch
Distributed: Experiences on Accelerating Data Parallel Training", VLDB 2020) or the asynchronous
master/worker Indexed ``Job`` (ADBO; Jiao et al., "Asynchronous Distributed Bilevel Optimization",
ICLR 2023) from the templates of ``k8s/training/``, follows it to the end and fetches its result.
One module per role:

* :mod:`~distillery.components.training.cluster.manifests`: the objects, built from the templates;
* :mod:`~distillery.components.training.cluster.kube`: the Kubernetes client (Secrets check, create,
  follow, fail clearly);
* :mod:`~distillery.components.training.cluster.pod`: what the pods run around the training command
  (``python -m distillery.components.training.cluster.pod stage ...``: inputs from and outputs to the
  task's MLflow run);
* :mod:`~distillery.components.training.cluster.methods`: the methods ``ddp_trainjob`` and ``adbo_job``
  and their typed specs (:class:`~distillery.components.training.cluster.methods.TrainJobSpec`,
  :class:`~distillery.components.training.cluster.methods.AsyncJobSpec`);
* :mod:`~distillery.components.training.cluster.errors`: what can go wrong.

Plain Python (no kfp). Nothing is imported here, so ``python -m ...cluster.pod`` runs the pod module once.
"""
