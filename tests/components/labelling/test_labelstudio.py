"""Human labelling with Label Studio: task export, parsing a completed export, DVC-versioned label sets
(`distillery labels import`), and the `label_studio` labelling method in a pipeline task."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, dvc, git, run_cli, task_context

from distillery.components.core.datasets import (
    LabelledData,
    data_version,
    save_arrays,
    save_labelled,
)
from distillery.components.labelling import labelstudio as ls
from distillery.components.labelling.labelstudio import LabelStudioAnnotator, MissingLabels

MNIST = ROOT / "data" / "mnist"
IDS = [3, 17, 256, 1024, 4999, 42]
CLASSES = [str(c) for c in range(10)]


@pytest.fixture(scope="module")
def mnist():
    return (np.load(MNIST / "features.npy"), np.load(MNIST / "labels.npy"),
            json.loads((MNIST / "dataset.json").read_text()))


def pixels(uri: str) -> np.ndarray:
    from PIL import Image

    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri[len(prefix):]))))


def annotation(choice: str | None, when: str, cancelled: bool = False, ident: int = 0) -> dict:
    result = [] if choice is None else [{"id": f"r{ident}", "type": "choices", "from_name": "label", "to_name": "image",
                                         "origin": "manual", "value": {"choices": [choice]}}]
    return {"id": ident, "result": result, "was_cancelled": cancelled, "ground_truth": False,
            "created_at": when, "updated_at": when, "lead_time": 2.5, "completed_by": 1}


def completed(tasks: list[dict], answers: dict[int, str]) -> list[dict]:
    """A Label Studio JSON export of ``tasks`` as an annotator would leave it: its own task ids,
    timestamps, predictions/drafts, and for the first task a superseded answer and a later skip."""
    out = []
    for n, task in enumerate(tasks):
        item = task["data"]["distillery_id"]
        annotations = [annotation(answers[item], "2025-05-01T10:00:00.000000Z", ident=10 * n)]
        if n == 0:  # first answered wrongly, corrected later; then a newer cancelled (skipped) one
            wrong = str((int(answers[item]) + 1) % 10)
            annotations = [annotation(wrong, "2025-05-01T09:00:00.000000Z", ident=10 * n + 1),
                           annotation(wrong, "2025-05-01T12:00:00.000000Z", cancelled=True, ident=10 * n + 2),
                           *annotations]
        out.append({"id": 500 + n, "data": task["data"], "meta": task["meta"], "annotations": annotations,
                    "drafts": [], "predictions": [], "project": 7, "created_at": "2025-05-01T08:00:00Z",
                    "updated_at": "2025-05-01T12:00:00Z", "inner_id": n + 1, "total_annotations": 1,
                    "cancelled_annotations": 0})
    return out


def test_image_tasks_carry_the_exact_pixels_and_provenance(mnist):
    features, _, meta = mnist
    tasks = ls.export_tasks(IDS, features[IDS], meta, "abc123.dir", "data/mnist", scores=np.linspace(1, 0, 6))
    assert [t["id"] for t in tasks] == IDS and [t["data"]["distillery_id"] for t in tasks] == IDS
    for task, item in zip(tasks, IDS):
        decoded = pixels(task["data"]["image"])
        assert decoded.dtype == np.uint8 and decoded.shape == (28, 28)
        assert np.array_equal(decoded, features[item].reshape(28, 28))
        assert {k: v for k, v in task["meta"].items() if k != "selection_score"} == \
            {"dataset": "mnist", "dataset_path": "data/mnist", "data_version": "abc123.dir"}
    assert [t["meta"]["selection_score"] for t in tasks] == pytest.approx(np.linspace(1, 0, 6))
    json.dumps(tasks)  # plain JSON, no numpy scalars
    # the curated float32 copy the pipeline holds gives the same PNG
    as_curated = ls.export_tasks(IDS[:1], features[IDS[:1]].astype(np.float32), meta)
    assert as_curated[0]["data"]["image"] == tasks[0]["data"]["image"]


def test_labelling_config_matches_the_tasks(mnist):
    config = ET.fromstring(ls.labelling_config(mnist[2]))
    image, choices = config.find("Image"), config.find("Choices")
    assert image.get("value") == "$image" and choices.get("toName") == image.get("name")
    assert choices.get("name") == "label" and choices.get("choice") == "single"
    assert [c.get("value") for c in choices.findall("Choice")] == CLASSES


def test_tabular_tasks_hold_the_row_by_feature_name():
    meta = {"name": "iris", "kind": "tabular", "feature_shape": [3], "classes": ["setosa", "virginica"],
            "feature_names": ["sepal length (cm)", "width", "n"], "value_range": None}
    tasks = ls.export_tasks([0, 2], np.array([[5.1, 3.5, 1.0], [6.2, np.nan, 2.0]], dtype=np.float32), meta)
    assert tasks[0]["data"] == {"sepal_length__cm_": pytest.approx(5.1), "width": 3.5, "n": 1.0, "distillery_id": 0}
    assert tasks[1]["data"]["width"] is None  # JSON has no NaN
    config = ET.fromstring(ls.labelling_config(meta))
    assert "sepal length (cm): $sepal_length__cm_" in config.find("Text").get("value")
    assert [c.get("value") for c in config.find("Choices").findall("Choice")] == ["setosa", "virginica"]
    with pytest.raises(ValueError, match="clash"):
        ls.export_tasks([0], np.zeros((1, 2)), {**meta, "feature_shape": [2], "feature_names": ["a b", "a-b"]})


def test_import_takes_the_latest_non_cancelled_annotation(mnist):
    features, labels, meta = mnist
    tasks = ls.export_tasks(IDS, features[IDS], meta)
    answers = {i: CLASSES[labels[i]] for i in IDS}
    assert ls.import_export(json.dumps(completed(tasks, answers)), range(5000), CLASSES) == \
        {i: int(labels[i]) for i in sorted(IDS)}


def _export(mutate) -> list[dict]:
    tasks = [{"id": 1, "data": {"image": "data:...", "distillery_id": 5},
              "annotations": [annotation("3", "2025-01-01T00:00:00Z")]},
             {"id": 2, "data": {"image": "data:...", "distillery_id": 9},
              "annotations": [annotation("7", "2025-01-01T00:00:00Z")]}]
    mutate(tasks)
    return tasks


@pytest.mark.parametrize("mutate, error, message", [
    (lambda t: t[1]["data"].update(distillery_id=5000), ls.UnknownIds, "task 2 (distillery_id 5000): not an item"),
    (lambda t: t[0]["annotations"][0]["result"][0]["value"].update(choices=["cat"]), ls.UnknownClasses,
     "task 1 (distillery_id 5): class 'cat' is not one of"),
    (lambda t: t[1].update(annotations=[]), ls.MissingAnnotations, "task 2 (distillery_id 9): no annotations"),
    (lambda t: t[1]["annotations"][0].update(was_cancelled=True), ls.MissingAnnotations,
     "all 1 annotation(s) cancelled"),
    (lambda t: t[0]["annotations"][0].update(result=[]), ls.MissingAnnotations, "chose no class"),
    (lambda t: t[0]["annotations"][0]["result"][0]["value"].update(choices=["3", "4"]), ls.MissingAnnotations,
     "chose 2 classes"),
    (lambda t: t[1]["data"].update(distillery_id=5), ls.ConflictingLabels, "distillery_id 5: task 1"),
    (lambda t: t[1]["data"].pop("distillery_id"), ls.MalformedExport, "task #1 (id 2): data.distillery_id is missing"),
    (lambda t: t.append("oops"), ls.MalformedExport, "task #2: not a task object"),
    (lambda t: t[0].update(annotations={"result": []}), ls.MalformedExport, "'annotations' is not a list"),
])
def test_each_problem_raises_its_error_listing_the_task(mutate, error, message):
    with pytest.raises(error) as err:
        ls.import_export(json.dumps(_export(mutate)), range(5000), CLASSES)
    assert isinstance(err.value, ValueError) and message in str(err.value)


@pytest.mark.parametrize("text", ["[{\"id\": 1,", "{\"tasks\": []}", "[]", b"\xff\xfe"])
def test_malformed_files_are_refused(text):
    with pytest.raises(ls.MalformedExport):
        ls.import_export(text, range(10), CLASSES)


def test_every_missing_annotation_is_listed():
    export = [{"id": n, "data": {"distillery_id": n}, "annotations": []} for n in range(3)]
    with pytest.raises(ls.MissingAnnotations) as err:
        ls.import_export(export, range(10), CLASSES)
    assert err.value.problems == [f"task {n} (distillery_id {n}): no annotations" for n in range(3)]


def data_md5(repo: Path) -> dict[str, str]:
    return {str(p.relative_to(repo)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted((repo / "data").rglob("*")) if p.is_file()}


def test_import_round_trip_versions_a_label_set_with_dvc(clone, tmp_path, mnist):
    from dvc.api import DVCFileSystem

    features, labels, meta = mnist
    old_rev, old_dvc, old_version = (git(clone, "rev-parse", "HEAD"), (clone / "data.dvc").read_text(),
                                     data_version(clone))
    tasks = ls.export_tasks(IDS, features[IDS], meta, old_version, "data/mnist")
    export = tmp_path / "project-1-at-2025-05-01.json"
    export.write_text(json.dumps(completed(tasks, {i: CLASSES[labels[i]] for i in IDS})))

    result = run_cli(clone, "labels", "import", str(export), "--dataset", "data/mnist", "--name", "round-1")
    assert result.returncode == 0, result.stderr
    assert "imported 6 labels" in result.stdout and "label_set: data/labels/mnist/round-1.json" in result.stdout
    assert (clone / "data.dvc").read_text() != old_dvc and data_version(clone) != old_version
    assert "up to date" in dvc(clone, "status").lower()
    stored = json.loads((clone / "data/labels/mnist/round-1.json").read_text())
    assert stored == {"count": 6, "dataset": "data/mnist", "sources": [export.name],
                      "labels": {str(i): CLASSES[labels[i]] for i in sorted(IDS)}}
    assert list(stored["labels"]) == [str(i) for i in sorted(IDS)]  # numeric order, deterministic

    # the old data version still reads back byte for byte, and has no label set
    old = DVCFileSystem(str(clone), rev=old_rev)
    for name in ("features.npy", "labels.npy", "dataset.json"):
        assert old.read_bytes(f"data/mnist/{name}") == (MNIST / name).read_bytes()
    assert not old.exists("data/labels")

    # the annotator answers from the label set, read through DVC at the new revision
    git(clone, "commit", "-qam", "labels round 1")
    order = np.arange(5000)[::-1].copy()  # curated rows need not be dataset ids
    curated = LabelledData(features[order].astype(np.float32), labels[order], order, meta)
    rows = np.array([4999 - i for i in IDS])
    source = {"repo": str(clone), "path": "data/mnist", "rev": git(clone, "rev-parse", "HEAD")}
    annotator = LabelStudioAnnotator.from_task(curated, source, label_set="data/labels/mnist/round-1.json")
    assert np.array_equal(annotator.annotate(rows), labels[IDS])
    with pytest.raises(MissingLabels) as err:
        annotator.annotate(np.array([rows[0], 4999 - 7]))
    assert list(err.value.ids) == [7] and "1 item(s) have no human label" in str(err.value)

    # a second export adds to the set; a conflicting one is refused and changes nothing
    more = tmp_path / "round-2.json"
    more.write_text(json.dumps(completed(ls.export_tasks([7, 8], features[[7, 8]], meta), {7: "1", 8: "2"})))
    assert run_cli(clone, "labels", "import", str(more), "--dataset", "data/mnist", "--name", "round-1").returncode == 0
    stored = json.loads((clone / "data/labels/mnist/round-1.json").read_text())
    assert stored["count"] == 8 and stored["sources"] == [export.name, more.name]
    before = (clone / "data.dvc").read_text(), data_md5(clone)
    clash = tmp_path / "clash.json"
    clash.write_text(json.dumps(completed(ls.export_tasks([7], features[[7]], meta), {7: "9"})))
    result = run_cli(clone, "labels", "import", str(clash), "--dataset", "data/mnist", "--name", "round-1")
    assert result.returncode == 2 and "distillery_id 7: '1' in data/labels/mnist/round-1.json, '9' in clash.json" \
        in result.stderr
    assert ((clone / "data.dvc").read_text(), data_md5(clone)) == before


BAD = {
    "unknown_id": (lambda t: t[0]["data"].update(distillery_id=123456), "UnknownIds", "not an item of the dataset"),
    "unknown_class": (lambda t: t[1]["annotations"][0]["result"][0]["value"].update(choices=["ten"]),
                      "UnknownClasses", "class 'ten' is not one of"),
    "missing_annotation": (lambda t: t[1].update(annotations=[]), "MissingAnnotations", "no annotations"),
    "malformed": (None, "MalformedExport", "not valid JSON"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_exports_leave_data_and_data_dvc_unchanged(kind, module_clone, tmp_path, mnist):
    from distillery.pipelines.labels import import_labels

    features, labels, meta = mnist
    mutate, error, message = BAD[kind]
    export = completed(ls.export_tasks(IDS[:3], features[IDS[:3]], meta), {i: CLASSES[labels[i]] for i in IDS})
    file = tmp_path / "export.json"
    if mutate is None:
        file.write_text(json.dumps(export)[:-40])
    else:
        mutate(export)
        file.write_text(json.dumps(export))
    before = (module_clone / "data.dvc").read_text(), data_md5(module_clone)
    with pytest.raises(getattr(ls, error), match=message):
        import_labels(module_clone, file, "data/mnist", "bad", log=lambda _: None)
    assert ((module_clone / "data.dvc").read_text(), data_md5(module_clone)) == before
    assert not (module_clone / "data" / "labels").exists()
    if kind == "unknown_class":  # and through the real command: a clear message, exit status 2
        result = run_cli(module_clone, "labels", "import", str(file), "--dataset", "data/mnist", "--name", "bad")
        assert result.returncode == 2 and "1 annotation(s) choose a class the dataset does not have" in result.stderr
        assert ((module_clone / "data.dvc").read_text(), data_md5(module_clone)) == before


def test_label_studio_task_asks_for_labels_then_uses_them(clone, tmp_path, mnist):
    """The `label_studio` labelling method: without labels it logs a task file and fails saying what to
    run; after `labels import` of that file (completed), the same task labels the batch."""
    import mlflow
    from distillery.components.core.datasets import load_arrays
    from distillery.components.labelling.tasks import LabelsNeeded, run_labelling
    from distillery.pipelines.labels import import_labels

    features, labels, meta = mnist
    n = 300
    save_labelled(tmp_path / "dataset", LabelledData(features[:n].astype(np.float32), labels[:n], np.arange(n), meta))
    save_arrays(tmp_path / "labelled", rows=np.arange(20), labels=labels[:20])
    picked = np.array([250, 31, 77, 120])
    save_arrays(tmp_path / "selected", rows=picked, scores=np.array([0.9, 0.8, 0.7, 0.6]))
    context = task_context(tmp_path, clone)
    params = json.dumps({"label_set": "data/labels/mnist/t.json"})
    paths = [str(tmp_path / p) for p in ("dataset", "labelled", "selected", "labelled_out")]

    with pytest.raises(LabelsNeeded) as err:
        run_labelling("label_studio", context, "run-1", params, 1, *paths)
    message = str(err.value)
    assert "round 1: 4 of 4 selected items need a human label" in message
    assert "label set data/labels/mnist/t.json (not created yet)" in message
    assert "distillery labels import EXPORT.json --dataset data/mnist --name t" in message
    assert "selection is seeded, so it picks the same batch" in message
    task_file = Path(message.split("Label Studio task file: ")[1].split("\n")[0].removeprefix("file://"))
    tasks = json.loads(task_file.read_text())
    assert [t["data"]["distillery_id"] for t in tasks] == picked.tolist()
    assert [t["meta"]["selection_score"] for t in tasks] == [0.9, 0.8, 0.7, 0.6]
    assert np.array_equal(pixels(tasks[2]["data"]["image"]), features[77].reshape(28, 28))
    assert (task_file.parent / "label_config.xml").is_file()

    export = tmp_path / "export.json"
    export.write_text(json.dumps(completed(tasks, {int(i): CLASSES[labels[i]] for i in picked})))
    import_labels(clone, export, "data/mnist", "t", log=lambda _: None)
    run_labelling("label_studio", context, "run-1", params, 1, *paths)
    out = load_arrays(paths[3])
    assert np.array_equal(out["labels"], np.concatenate([labels[:20], labels[picked]]))

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tasks").experiment_id],
                              filter_string="tags.`distillery.task` = 'round-1-label-label_studio'",
                              order_by=["attributes.start_time ASC"])
    assert [r.info.status for r in runs] == ["FAILED", "FINISHED"]
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id, "label_studio")} == \
        {"label_studio/tasks.json", "label_studio/label_config.xml"}
    assert {"class_balance.json", "class_balance.png"} <= {a.path for a in client.list_artifacts(runs[1].info.run_id)}
    counts = np.bincount(np.concatenate([labels[:20], labels[picked]]), minlength=10)
    assert runs[1].data.metrics["min_class_fraction"] == pytest.approx(counts.min() / 24)
