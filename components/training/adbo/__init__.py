"""ADBO: asynchronous distributed bilevel optimisation (Jiao et al., ICLR 2023), master + N workers.

Layout (maths apart from transport, so the update rules are testable without processes):

* :mod:`.core` -- the update rules as plain functions: ``master_step``, ``worker_step``,
  ``make_cut``, ``prune_cuts``, the S-of-N / tau ``gate``, the unrolled residual ``h`` (autograd).
* :mod:`.loop` -- one iteration on each side, shared by the processes, plus ``simulate`` (the
  whole algorithm in one process on a simulated clock).
* :mod:`.problems` -- ``quadratic`` (closed-form solution), ``hyperclean`` (per-sample weights
  against a clean validation set), ``feature_reg`` (per-feature L2 penalties).
* :mod:`.runtime` -- master and workers as separate processes over ``torch.distributed.rpc``
  (TensorPipe): lost workers dropped, checkpoints, MLflow (:mod:`.tracking`).
* :mod:`.launcher` -- starts N + 1 local processes of ``python -m distillery.components.training.adbo`` with
  the environment a Kubernetes Indexed Job gives (``k8s/training/async-workers.yaml``).
* :mod:`.hyperclean` -- the training-stage method ``adbo_hyperclean``.

Example::

    from distillery.components.training.adbo.config import ADBOConfig
    from distillery.components.training.adbo.launcher import launch

    result = launch(ADBOConfig(problem="hyperclean", workers=4, s=2, tau=4, iterations=300,
                               delay_base=0.03, delay_median=0.03, slowdown={1: 3.0}), "adbo-out/")
"""
