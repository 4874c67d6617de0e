"""Training stage: the teacher, retrained from scratch on the labelled set each round."""
from distillery.components.core.registry import Method

METHODS = [
    Method("training", "small_cnn", "LeCun et al., Gradient-based learning applied to document recognition, "
                                    "Proc. IEEE 1998",
           "Two-block CNN (~409k parameters on MNIST) trained with Adam and cross-entropy",
           "distillery.components.core.train:train_classifier",
           defaults={"epochs": 30, "lr": 1e-3, "batch_size": 32, "channels": 16, "hidden": 256}),
    Method("training", "supervised", "Kingma & Ba, Adam: A Method for Stochastic Optimization, ICLR 2015",
           "Any model-zoo architecture (`arch`, `arch_kwargs`: an MLP for tables, a CNN for images) trained in "
           "this process with Adam and cross-entropy",
           "distillery.components.core.train:train_classifier",
           defaults={"arch": "mlp", "arch_kwargs": {}, "epochs": 30, "lr": 1e-3, "batch_size": 32}),
    Method("training", "ddp", "Li et al., PyTorch Distributed: Experiences on Accelerating Data Parallel Training, "
                              "VLDB 2020",
           "Data-parallel training (DistributedDataParallel under torchrun, gloo/NCCL) of any architecture; "
           "same model as one process with the same global batch; checkpointed, resumable",
           "distillery.components.training.distributed:train_data_parallel",
           defaults={"arch": "small_cnn", "arch_kwargs": {}, "nproc_per_node": 2, "epochs": 30, "lr": 1e-3,
                     "batch_size": 32, "checkpoint_every": 5, "max_restarts": 0},
           execution="torchrun"),
    Method("training", "adbo_hyperclean", "Jiao et al., Asynchronous Distributed Bilevel Optimization, ICLR 2023",
           "Data hyper-cleaning: per-sample weights learned by asynchronous distributed bilevel optimisation "
           "(master + workers over torch rpc, S-of-N / tau-stale gate) against a held-out clean split, then "
           "the architecture trained on the weighted samples",
           "distillery.components.training.adbo.hyperclean:adbo_hyperclean",
           defaults={"arch": "mlp", "arch_kwargs": {}, "epochs": 30, "lr": 1e-3, "batch_size": 32, "workers": 2,
                     "s": 1, "tau": 4, "iterations": 150, "val_fraction": 0.1, "hyper": {}, "problem_kwargs": {},
                     "rpc_timeout": 60.0}),
    Method("training", "spsa_finetune",
           "Zelikman et al., Just One Byte (per gradient): A Note on Low-Bandwidth Decentralized Language Model "
           "Finetuning Using Shared Randomness, arXiv:2306.10015, 2023",
           "The architecture trained with Adam, then fine-tuned by shared-randomness SPSA in `workers` processes "
           "(gloo), each on its own shard, sending one byte per projected gradient; weight hashes checked each round",
           "distillery.components.training.collaborative:spsa_finetune",
           defaults={"arch": "mlp", "arch_kwargs": {}, "epochs": 30, "lr": 1e-3, "batch_size": 32, "workers": 2,
                     "rounds": 100, "samples_per_worker": 8, "spsa_lr": 5e-3, "epsilon": 1e-3,
                     "timeout_s": 3600.0}),
    Method("training", "federated",
           "Su, Xu & Yang, Global Convergence of Federated Learning for Mixed Regression, NeurIPS 2022; "
           "McMahan et al., Communication-Efficient Learning of Deep Networks from Decentralized Data (FedAvg), "
           "AISTATS 2017; Li et al., Federated Optimization in Heterogeneous Networks (FedProx), MLSys 2020",
           "The labelled set dealt to `clients` non-IID clients; FedAvg (mu = 0) or FedProx (mu > 0), or with "
           "`clusters` > 1 clustered FL returning the cluster model that serves the most data",
           "distillery.components.training.collaborative:federated",
           defaults={"arch": "small_cnn", "arch_kwargs": {}, "epochs": 10, "lr": 0.1, "batch_size": 10,
                     "clients": 10, "rounds": 20, "local_epochs": 5, "mu": 0.0, "clusters": 1}),
    Method("training", "fusion",
           "Choshen et al., Fusing finetuned models for better pretraining, arXiv:2204.03044, 2022",
           "A base trained on the labelled set, `models` copies fine-tuned on different random subsets, "
           "fused by averaging their weights",
           "distillery.components.training.collaborative:fusion",
           defaults={"arch": "small_cnn", "arch_kwargs": {}, "epochs": 30, "lr": 1e-3, "batch_size": 32, "models": 3,
                     "subset_fraction": 0.5, "finetune_epochs": 5}),
    Method("training", "ddp_trainjob", "Li et al., PyTorch Distributed: Experiences on Accelerating Data Parallel "
                                       "Training, VLDB 2020",
           "Data-parallel training (DDP under torchrun) on the cluster as a Kubeflow Trainer TrainJob "
           "(k8s/training/trainjob.yaml): `nodes` x `gpus_per_node`, queued by Kueue; the labelled set goes to the "
           "pods and the model comes back through the task's MLflow run; same model as `ddp` with the same world size",
           "distillery.components.training.cluster.methods:ddp_trainjob",
           defaults={"arch": "small_cnn", "arch_kwargs": {}, "epochs": 30, "lr": 1e-3, "batch_size": 256,
                     "namespace": "distillery", "nodes": 2, "gpus_per_node": 1, "procs_per_node": None, "cpu": "4",
                     "memory": "16Gi", "image": None, "queue": "distillery", "priority_class": "distillery-adhoc",
                     "checkpoint_every": 5, "timeout_s": 7200.0, "poll_s": 15.0, "on_timeout": "leave"},
           execution="cluster"),
    Method("training", "adbo_job", "Jiao et al., Asynchronous Distributed Bilevel Optimization, ICLR 2023",
           "`adbo_hyperclean` with the ADBO master and `workers` workers in the cluster, as the Indexed Job of "
           "k8s/training/async-workers.yaml (stable pod names, one lost worker tolerated); the split goes to the "
           "pods and the learnt sample weights come back through the task's MLflow run, then the architecture "
           "is trained on the weighted samples in the task",
           "distillery.components.training.cluster.methods:adbo_job",
           defaults={"arch": "mlp", "arch_kwargs": {}, "epochs": 30, "lr": 1e-3, "batch_size": 32,
                     "namespace": "distillery", "workers": 3, "s": 2, "tau": 4, "iterations": 300,
                     "min_workers": None, "val_fraction": 0.1, "hyper": {}, "problem_kwargs": {},
                     "rpc_timeout": 120.0, "cpu": "2", "memory": "4Gi", "image": None, "queue": "distillery",
                     "priority_class": "distillery-adhoc", "timeout_s": 7200.0, "poll_s": 15.0,
                     "on_timeout": "leave"},
           execution="cluster"),
    Method("training", "fixmatch",
           "Sohn et al., FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence, "
           "NeurIPS 2020",
           "Pool-aware: the labelled set plus the unlabelled pool; a confident prediction on a weak view "
           "(>= threshold) is the pseudo-label of a strong view (images: shifts, affine, contrast, Cutout; "
           "tables: noise, feature dropout); `epochs` passes over the pool",
           "distillery.components.training.pool_aware:fixmatch",
           defaults={"arch": "small_cnn", "arch_kwargs": {}, "epochs": 10, "lr": 1e-3, "batch_size": 32,
                     "threshold": 0.8, "lambda_u": 1.0, "mu": 3},
           inputs=("unlabelled",)),
    Method("training", "mean_teacher",
           "Tarvainen & Valpola, Mean teachers are better role models: Weight-averaged consistency targets "
           "improve semi-supervised deep learning results, NeurIPS 2017",
           "Pool-aware: the student matches an exponential-moving-average teacher's class probabilities on other "
           "augmented views of the pool (ramped-up squared error) while fitting the labels; returns the teacher",
           "distillery.components.training.pool_aware:mean_teacher",
           defaults={"arch": "small_cnn", "arch_kwargs": {}, "epochs": 10, "lr": 1e-3, "batch_size": 32,
                     "lambda_u": 10.0, "mu": 3, "ema_decay": 0.99, "rampup_fraction": 0.3},
           inputs=("unlabelled",)),
]
