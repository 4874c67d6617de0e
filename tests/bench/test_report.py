"""``benchmarks/report.py``: the READMEs' benchmark numbers are generated from ``benchmarks/results/*.json``,
and ``--check`` fails whenever a README and the JSON disagree (issue 18).

Most tests work on a temporary README and results folder built from two real result files, so they
do not depend on the state of the other benchmarks; the last one checks the real READMEs.
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil

import pytest

from benchmarks import report

RESULTS = report.RESULTS
NAMES = ("image_build.json", "gpu_stages.json")


def _block(name: str, view: str | None = None) -> str:
    tag = f"results/{name}" + (f":{view}" if view else "")
    return f"<!-- {tag} -->\n<!-- /{tag} -->"


@pytest.fixture
def site(tmp_path):
    """A results folder with two real JSONs and a README whose blocks ``benchmarks.report`` filled."""
    results = tmp_path / "results"
    results.mkdir()
    for name in NAMES:
        shutil.copy(RESULTS / name, results / name)
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\nProse that states no number.\n\n" + _block(NAMES[0]) + "\n\nMore prose.\n\n"
                      + _block(NAMES[1]) + "\n\nIn the top-level style:\n\n" + _block(NAMES[1], "summary") + "\n")
    assert check(readme, results, write=True)[0] == 0
    return readme, results


def check(readme, results, write: bool = False) -> tuple[int, str]:
    """``benchmarks.report [--check]`` on one README and results folder: (exit code, what it reported)."""
    return run(["--readme", str(readme), "--results", str(results)] + ([] if write else ["--check"]))


def run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = report.main(argv)
    return code, err.getvalue()


def test_generated_readme_passes_and_holds_the_json_numbers(site):
    readme, results = site
    assert check(readme, results) == (0, "")
    text = readme.read_text()
    build = json.loads((results / "image_build.json").read_text())["summary"]
    assert f"| {build['code_only_rebuild_s']:.1f} |" in text  # the table's number is the JSON's
    assert "Prose that states no number." in text and "More prose." in text  # prose around blocks kept


def test_a_tampered_number_fails_the_check_and_is_shown(site):
    readme, results = site
    text = readme.read_text()
    seconds = json.loads((results / "image_build.json").read_text())["summary"]["code_only_rebuild_s"]
    tampered = text.replace(f"| {seconds:.1f} |", f"| {seconds + 1:.1f} |")
    assert tampered != text
    readme.write_text(tampered)
    code, err = check(readme, results)
    assert code == 1
    assert "results/image_build.json: differs from its JSON" in err
    assert f"{seconds + 1:.1f}" in err and f"{seconds:.1f}" in err  # the diff shows both numbers
    assert readme.read_text() == tampered  # --check changes nothing
    assert check(readme, results, write=True)[0] == 0 and readme.read_text() == text  # the report mends it


def test_a_changed_json_fails_the_check(site):
    readme, results = site
    path = results / "gpu_stages.json"
    result = json.loads(path.read_text())
    result["runs"]["cpu-fp32"]["quality"]["teacher_test_accuracy"] = 0.5
    path.write_text(json.dumps(result))
    code, err = check(readme, results)
    assert code == 1 and err.count(": differs from its JSON") == 2  # the table and the summary view
    assert "results/gpu_stages.json:summary: differs" in err and "teacher 0.500" in err


def test_a_json_without_a_block_is_an_orphan(site):
    readme, results = site
    text = readme.read_text()
    start, end = text.index("<!-- results/image_build.json -->"), text.index("<!-- /results/image_build.json -->")
    readme.write_text(text[:start] + text[end + len("<!-- /results/image_build.json -->"):])
    code, err = check(readme, results)
    assert code == 1 and "image_build.json: orphan" in err


def test_a_block_without_its_json_is_reported(site):
    readme, results = site
    readme.write_text(readme.read_text() + "\n" + _block("no_such_benchmark.json") + "\n")
    code, err = check(readme, results)
    assert code == 1 and "results/no_such_benchmark.json: block without its JSON" in err


def test_an_unclosed_block_is_reported(site):
    readme, results = site
    readme.write_text(readme.read_text() + "\n<!-- results/image_build.json -->\n| 1 |\n")
    code, err = check(readme, results)
    assert code == 1 and "opened and never closed" in err


@pytest.mark.parametrize("drop", ["provenance", "machine"])
def test_a_json_without_provenance_or_machine_is_reported(site, drop):
    readme, results = site
    path = results / "image_build.json"
    result = json.loads(path.read_text())
    del result[drop]
    path.write_text(json.dumps(result))
    code, err = check(readme, results)
    assert code == 1
    assert f"image_build.json: no {drop}" in err


def _edit_protocol(results, edit) -> None:
    path = results / "image_build.json"
    result = json.loads(path.read_text())
    edit(result["summary"])
    path.write_text(json.dumps(result))


def test_a_json_without_summary_protocol_is_reported(site):
    readme, results = site
    _edit_protocol(results, lambda summary: summary.pop("protocol"))
    code, err = check(readme, results)
    assert code == 1 and "image_build.json: no summary.protocol" in err
    assert "differs from its JSON" not in err  # the tables do not show the protocol: only the check fails


def test_a_json_without_summary_is_reported(site):
    readme, results = site
    path = results / "gpu_stages.json"  # its markdown reads no summary
    result = json.loads(path.read_text())
    del result["summary"]
    path.write_text(json.dumps(result))
    code, err = check(readme, results)
    assert code == 1 and "gpu_stages.json: no summary.protocol" in err


@pytest.mark.parametrize("key", report.PROTOCOL_KEYS)
def test_a_protocol_without_a_key_is_reported(site, key):
    readme, results = site
    _edit_protocol(results, lambda summary: summary["protocol"].pop(key))
    code, err = check(readme, results)
    assert code == 1 and f"image_build.json: summary.protocol lacks {key}" in err
    assert "model_selection is" not in err  # a missing model_selection is reported once, as missing


def test_every_missing_key_is_named(site):
    readme, results = site
    _edit_protocol(results, lambda summary: summary.update(protocol={"seeds": 3}))
    code, err = check(readme, results)
    assert code == 1 and "summary.protocol lacks split_sizes, model_selection, config, config_sha256" in err


@pytest.mark.parametrize("value", ["test", "Validation", None, ""])
def test_a_model_selection_other_than_validation_or_none_is_reported(site, value):
    readme, results = site
    _edit_protocol(results, lambda summary: summary["protocol"].update(model_selection=value))
    code, err = check(readme, results)
    assert code == 1 and f"image_build.json: summary.protocol.model_selection is {value!r}" in err


@pytest.mark.parametrize("value", report.MODEL_SELECTION)
def test_validation_and_none_pass(site, value):
    readme, results = site
    _edit_protocol(results, lambda summary: summary["protocol"].update(model_selection=value))
    assert check(readme, results) == (0, "")


def test_the_protocol_helper_builds_what_the_check_wants():
    from benchmarks import _results

    built = _results.protocol(split_sizes={"train": 10, "test": 5}, model_selection="none", seeds=[0, 1, 2])
    assert report.protocol_problems({"summary": {"protocol": built}}) == []
    ref = {"config": "benchmarks/configs/x.json", "config_sha256": "0" * 64}
    built = _results.protocol(split_sizes={}, model_selection="validation", seeds=3, config=ref, extra=1)
    assert report.protocol_problems({"summary": {"protocol": built}}) == [] and built["extra"] == 1


def test_a_quoted_marker_in_prose_is_not_a_block(site):
    readme, results = site
    readme.write_text(readme.read_text() + "\nBlocks look like `<!-- results/NAME.json -->` ... "
                      "`<!-- /results/NAME.json -->`.\n")
    assert check(readme, results) == (0, "")


def test_quick_results_are_not_looked_at(site):
    readme, results = site
    (results / "quick").mkdir()
    shutil.copy(results / "image_build.json", results / "quick" / "image_build.json")
    assert check(readme, results) == (0, "")


def test_the_real_readmes_agree_with_the_results():
    """What ``make test`` runs: every block of both READMEs is what its JSON renders, no JSON is left out."""
    code, err = run(["--check"])
    assert code == 0, err
