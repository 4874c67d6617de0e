"""The Distillery pipelines, assembled from a config: one registered method's component per stage.

``pipeline: active_learning`` (the default)::

    curate [-> curation steps] -> split -> train (round 0) -> R x [select -> label -> train] -> distil -> evaluate

Active-learning rounds depend on each other (a round selects with the previous round's teacher),
so they are unrolled at compile time from ``selection.rounds`` rather than run as a parallel loop.

``pipeline: retraining`` (what ``distillery schedule`` runs)::

    check-retraining -> [only if it decides to retrain] curate [-> steps] -> split -> train -> distil -> evaluate/gate

The check resolves the newest data version at run time and hands every later task a run context
pinned to it, so all tasks of one scheduled run read the same data even if a new version lands
mid-run. Caching is off on every task: a scheduled run must really re-read data and retrain.
"""

import json
from typing import Any

from kfp import dsl

from distillery.pipelines.components import method_component
from distillery.pipelines.config import KIND_STAGES, task_names


def build_pipeline(config: dict[str, Any], context_json: str, for_cluster: bool = False):
    """A KFP pipeline function for ``config``; ``context_json`` (the run context shared by every
    task) is the default of its ``context`` parameter. ``for_cluster`` adds the Kubernetes settings
    of ``config['cluster']`` (Secrets, DVC remote, queue, GPU placement) to each task."""
    kind = config["pipeline"]
    stages = KIND_STAGES[kind]
    component = {stage: method_component(stage, config[stage]["method"]) for stage in stages}
    params = {stage: json.dumps(config[stage]["params"], sort_keys=True) for stage in stages}
    steps = [(method_component("curation_step", s["method"]), json.dumps(s["params"], sort_keys=True))
             for s in config["curation"]["steps"]]
    cluster = _cluster_settings(config, stages) if for_cluster else None
    names = iter(task_names(config))

    @dsl.pipeline(name=f"distillery-{config['name']}", description=config.get("description") or
                  "Curate, select (active learning), train, distil, evaluate")
    def pipeline(context: str = context_json):
        def add(stage: str, comp, stage_params: str, run_context, **inputs):
            if "method" in comp.component_spec.inputs:  # a method's component: the name is in the spec too
                inputs["method"] = comp.component_spec.inputs["method"].default
            task = comp(context=run_context, run_key=dsl.PIPELINE_JOB_ID_PLACEHOLDER, params=stage_params, **inputs)
            task.set_display_name(next(names)).set_caching_options(False)
            if cluster is not None:
                from distillery.pipelines.cluster import apply_task_settings

                apply_task_settings(task, stage, cluster)
            return task

        def task(stage: str, run_context, **inputs):
            return add(stage, component[stage], params[stage], run_context, **inputs)

        def curate_and_split(run_context):
            curated = task("curation", run_context).outputs["dataset"]
            for step, step_params in steps:
                curated = add("curation", step, step_params, run_context, dataset=curated).outputs["curated"]
            split = task("split", run_context, dataset=curated)
            return curated, split.outputs["splits"], split.outputs["labelled"]

        def distil_and_evaluate(run_context, data, labelled, teacher):
            student = task("distillation", run_context, labelled=labelled, teacher=teacher, **data).outputs["student"]
            task("evaluation", run_context, teacher=teacher, student=student, **data)

        if kind == "retraining":
            from distillery.components.core.tracking import SKIP
            from distillery.components.evaluation.component import check_retraining

            check = add("check", check_retraining, json.dumps(config["retraining"], sort_keys=True), context)
            with dsl.If(check.output != SKIP, name="retrain"):
                run_context = check.output
                curated, splits, labelled = curate_and_split(run_context)
                data = dict(dataset=curated, splits=splits)
                teacher = task("training", run_context, round_index=0, labelled=labelled, **data).outputs["model"]
                distil_and_evaluate(run_context, data, labelled, teacher)
            return

        curated, splits, labelled = curate_and_split(context)
        data = dict(dataset=curated, splits=splits)
        rounds, batch_size = config["selection"]["rounds"], config["selection"]["batch_size"]
        teacher = task("training", context, round_index=0, labelled=labelled, **data).outputs["model"]
        for r in range(1, rounds + 1):
            selected = task("selection", context, round_index=r, batch_size=batch_size, labelled=labelled,
                            model=teacher, **data).outputs["selected"]
            labelled = task("labelling", context, round_index=r, dataset=curated, labelled=labelled,
                            selected=selected).outputs["labelled_out"]
            teacher = task("training", context, round_index=r, labelled=labelled, **data).outputs["model"]
        distil_and_evaluate(context, data, labelled, teacher)

    return pipeline


def _cluster_settings(config: dict[str, Any], stages: tuple[str, ...]) -> dict[str, Any]:
    from distillery.pipelines.cluster import validate_cluster

    return config.get("cluster") or validate_cluster({}, stages)
