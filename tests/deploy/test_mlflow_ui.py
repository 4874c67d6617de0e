"""The MLflow UI as a user sees it: ``mlflow/server.sh`` serving the store a real pipeline run left,
browsed with headless Chromium (Debian's ``chromium``, driven by Playwright).

The store is conftest's session-wide ``tiny_pipeline`` (the same run test_pipeline_run.py checks).
Selectors are what a user reads on the page (link names, image alt texts, alias tags) in the MLflow
3.17 React app, whose routes are hash routes: ``#/experiments/<id>``, ``#/experiments/<id>/runs/<run>``,
``#/models/<name>``. Where no Chromium is installed the tests skip, unless
``DISTILLERY_REQUIRE_BROWSER=1`` (set by ``.ci/run``, which installs it), where that is a failure.
On a failure the page is saved as a screenshot in the test's ``tmp_path``.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from servers import MlflowServer

from distillery.pipelines.config import load_config, task_names

pytestmark = [pytest.mark.pipeline, pytest.mark.browser]
TINY = Path(__file__).resolve().parents[2] / "tests" / "configs" / "tiny.yaml"
# A clean, quiet headless browser: no GPU, no sandbox (CI runs as root), nothing fetched from outside.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--no-proxy-server"]
TIMEOUT_MS = 60_000  # the single-page app loads slowly on a busy 2-core machine


def chromium_path() -> str:
    """Debian's Chromium (Playwright's own browser download is not used); skip or fail without it."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    if os.environ.get("DISTILLERY_REQUIRE_BROWSER") == "1":
        pytest.fail("Chromium is required here (DISTILLERY_REQUIRE_BROWSER=1) but `chromium` is not on PATH")
    pytest.skip("no Chromium installed (apt-get install chromium)")


@pytest.fixture(scope="session", autouse=True)
def chromium() -> str:
    """Checked first (autouse, session scope), so no pipeline runs for tests that then skip."""
    return chromium_path()


@pytest.fixture(scope="module")
def story(tiny_pipeline):
    """What the UI should show, read from the store: the experiment, the finished pipeline run, its
    task runs and the champion version."""
    import mlflow

    client = mlflow.MlflowClient(tiny_pipeline.store)
    experiment = client.get_experiment_by_name("distillery-tests")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parent = next(r for r in runs if r.data.tags.get("distillery.role") == "pipeline" and r.info.status == "FINISHED")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return {"experiment": experiment.experiment_id, "parent": parent,
            "children": {r.info.run_name: r for r in children},
            "champion": client.get_model_version_by_alias("tiny-student", "champion")}


@pytest.fixture(scope="module")
def server(tiny_pipeline, tmp_path_factory) -> Iterator[MlflowServer]:
    store_dir = Path(tiny_pipeline.store.removeprefix("sqlite:///")).parent
    mlflow_server = MlflowServer(tmp_path_factory.mktemp("ui-server"),
                                 MLFLOW_BACKEND_STORE_URI=tiny_pipeline.store,
                                 MLFLOW_ARTIFACTS_DESTINATION=str(store_dir / "mlartifacts"))
    try:
        yield mlflow_server.start()
    finally:
        mlflow_server.stop()


@pytest.fixture(scope="module")
def page(chromium, server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Playwright gives every launch a fresh, throwaway profile (its own --user-data-dir).
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1600, "height": 1000})
            tab.set_default_timeout(TIMEOUT_MS)
            yield tab
        finally:
            browser.close()


@contextmanager
def open_page(page, server: MlflowServer, route: str, shot: Path):
    """``page`` at ``route`` (a hash route); a screenshot goes to ``shot`` when the block fails."""
    page.goto(f"{server.url}/{route}")
    try:
        yield page
    except BaseException:
        page.screenshot(path=str(shot), full_page=True)
        raise


def test_experiment_page_lists_the_pipeline_run_with_its_task_runs_nested(page, server, story, tmp_path):
    # The experiment page in the "Model training" view (MLflow 3 opens GenAI's by default; the
    # app's own links carry the view as ?workflowType=).
    route = f"#/experiments/{story['experiment']}?workflowType=machine_learning"
    with open_page(page, server, route, tmp_path / "experiment.png"):
        parent = page.get_by_role("link", name=story["parent"].info.run_name, exact=True)
        parent.wait_for()
        tasks = task_names(load_config(TINY))
        assert sorted(story["children"]) == sorted(tasks)
        evaluation = page.get_by_role("link", name="evaluate-classification", exact=True)
        assert evaluation.count() == 0  # collapsed: the task runs sit under their pipeline run
        # the expander is the one button in the parent's run-name cell
        page.get_by_role("gridcell").filter(has=parent).get_by_role("button").click()
        evaluation.wait_for()
        for task in tasks:
            link = page.get_by_role("link", name=task, exact=True)
            assert link.is_visible(), task
            assert link.get_attribute("href").endswith(f"/runs/{story['children'][task].info.run_id}")
        # below the parent row, not beside it
        assert page.get_by_role("link", name="curate-gx_dedup", exact=True).bounding_box()["y"] > \
            parent.bounding_box()["y"]


def test_pipeline_run_page_tells_config_data_version_and_outcome(page, server, story, tmp_path):
    run = story["parent"]
    route = f"#/experiments/{story['experiment']}/runs/{run.info.run_id}"
    with open_page(page, server, route, tmp_path / "pipeline_run.png"):
        tags = run.data.tags
        champion = story["champion"]
        # the description, rendered from markdown (backticks become code spans)
        description = page.get_by_text("Pipeline tiny on data/mnist "
                                       f"(data version {tags['distillery.data_version'][:12]}")
        description.wait_for()
        text = description.inner_text()
        assert "teacher accuracy" in text and "student" in text
        assert f"tiny-student v{champion.version}" in text and "becomes champion" in text
        assert f"Config: {load_config(TINY)['description']}." in text
        # every task run is one click away from here (the child-run list is a request of its own,
        # answered after the description: wait for each link rather than count at once)
        for task in story["children"]:
            page.get_by_role("link", name=task, exact=True).first.wait_for(timeout=30_000)


def test_task_runs_say_what_they_did(page, server, story, tmp_path):
    for run in story["children"].values():
        note = run.data.tags["mlflow.note.content"]
        assert "with `" in note and "Result: " in note and note.rstrip().endswith(" s."), note
    evaluation = story["children"]["evaluate-classification"]
    route = f"#/experiments/{story['experiment']}/runs/{evaluation.info.run_id}"
    with open_page(page, server, route, tmp_path / "evaluation_run.png"):
        description = page.get_by_text("Evaluation with classification: ")  # markdown: `code` spans
        description.wait_for()
        text = description.inner_text()
        accuracy = evaluation.data.metrics["student_accuracy"]
        assert "Result: " in text and f"student_accuracy {accuracy:.4g}" in text, text
        assert f"promotion: {evaluation.data.tags['promotion']}" in text, text


@pytest.mark.parametrize("image", ["learning_curve.png", "teacher_confusion_matrix.png",
                                   "student_confusion_matrix.png"])
def test_evaluation_images_open(page, server, story, image, tmp_path):
    evaluation = story["children"]["evaluate-classification"]
    route = f"#/experiments/{story['experiment']}/runs/{evaluation.info.run_id}/artifacts"
    with open_page(page, server, route, tmp_path / f"artifacts_{image}"):
        page.get_by_text(image, exact=True).click()  # the file in the artifact tree
        shown = page.get_by_role("img", name=image, exact=True)
        shown.wait_for()
        # decoded, not a broken-image placeholder
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=shown.element_handle())
        assert shown.evaluate("img => img.naturalWidth") >= 200


def test_registered_model_shows_the_champion_alias(page, server, story, tmp_path):
    champion = story["champion"]
    with open_page(page, server, "#/models/tiny-student", tmp_path / "model.png"):
        row = page.get_by_role("row").filter(
            has=page.get_by_role("link", name=f"Version {champion.version}", exact=True))
        # an alias is a tag titled with its name (the version's key-value tags are tags too)
        row.get_by_role("status", name="champion", exact=True).wait_for()
        assert row.count() == 1
