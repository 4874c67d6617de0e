"""The Distillery pipeline, assembled from a config: one registered component per stage.

curate -> split -> train (round 0) -> R x [select -> label -> train] -> distil -> evaluate

Active-learning rounds depend on each other (a round selects with the previous round's teacher),
so they are unrolled at compile time from ``selection.rounds`` rather than run as a parallel loop.
"""

import json
from typing import Any

from kfp import dsl

from components import registry
from pipelines.config import PIPELINE_STAGES, task_names


def build_pipeline(config: dict[str, Any], context_json: str):
    """A KFP pipeline function for ``config``; ``context_json`` (the run context shared by every
    task) is the default of its ``context`` parameter."""
    component = {stage: registry.get(stage, config[stage]["method"]).load_component() for stage in PIPELINE_STAGES}
    params = {stage: json.dumps(config[stage]["params"], sort_keys=True) for stage in PIPELINE_STAGES}
    rounds, batch_size = config["selection"]["rounds"], config["selection"]["batch_size"]
    names = iter(task_names(config))

    @dsl.pipeline(name=f"distillery-{config['name']}", description=config.get("description") or
                  "Curate, select (active learning), train, distil, evaluate")
    def pipeline(context: str = context_json):
        def task(stage: str, **inputs):
            common = dict(context=context, run_key=dsl.PIPELINE_JOB_ID_PLACEHOLDER, params=params[stage])
            return component[stage](**common, **inputs).set_display_name(next(names)).set_caching_options(False)

        curated = task("curation").outputs["dataset"]
        split = task("split", dataset=curated)
        splits, labelled = split.outputs["splits"], split.outputs["labelled"]
        data = dict(dataset=curated, splits=splits)
        teacher = task("training", round_index=0, labelled=labelled, **data).outputs["model"]
        for r in range(1, rounds + 1):
            selected = task("selection", round_index=r, batch_size=batch_size, labelled=labelled,
                            model=teacher, **data).outputs["selected"]
            labelled = task("labelling", round_index=r, dataset=curated, labelled=labelled,
                            selected=selected).outputs["labelled_out"]
            teacher = task("training", round_index=r, labelled=labelled, **data).outputs["model"]
        student = task("distillation", labelled=labelled, teacher=teacher, **data).outputs["student"]
        task("evaluation", teacher=teacher, student=student, **data)

    return pipeline
