"""Render the READMEs' benchmark tables from ``benchmarks/results/*.json``, or check that they agree.

Every number a README quotes from a benchmark lives in a generated block, one per result file (a
result may have several blocks, across both READMEs):

    <!-- results/NAME.json -->              or, for a shorter rendering:   <!-- results/NAME.json:VIEW -->
    ...markdown(result) of the module that wrote NAME.json...
    <!-- /results/NAME.json -->                                            <!-- /results/NAME.json:VIEW -->

The module is the one the JSON names in ``provenance.script`` (``benchmarks.distillation``); its
``markdown(result)`` (``markdown(result, view)`` for a view) renders the block from the JSON alone.

    python -m benchmarks.report            # rewrite every block from its JSON
    python -m benchmarks.report --check    # change nothing; exit 1 listing every disagreement

``--check`` (part of ``make test``) reports each block that differs from its JSON, each result JSON
that no block shows (an orphan: delete it or show it), each block whose JSON is missing, each JSON
without ``provenance`` (script, commit) or ``machine``, and each JSON whose ``summary.protocol`` is
missing, lacks one of ``PROTOCOL_KEYS`` or has a ``model_selection`` other than ``"validation"`` or
``"none"`` (``benchmarks._results.protocol`` builds it). Only ``results/*.json`` count: ``--quick``
runs write under ``results/quick/``, which is ignored.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
READMES = (ROOT / "benchmarks" / "README.md", ROOT / "README.md")
# markers stand on lines of their own (a marker quoted inside a sentence is prose, not a block)
BLOCK = re.compile(r"^<!-- results/(?P<name>[\w.-]+\.json)(?::(?P<view>[\w-]+))? -->\n"
                   r"(?P<body>.*?)"
                   r"^<!-- /results/(?P=name)(?::(?P=view))? -->$", re.S | re.M)
OPENING = re.compile(r"^<!-- results/\S+ -->$", re.M)
DIFF_LINES = 12  # of a differing block's diff shown by --check: enough to see which numbers moved
# what every result's summary.protocol states (benchmarks/README.md, "One protocol")
PROTOCOL_KEYS = ("split_sizes", "model_selection", "seeds", "config", "config_sha256")
MODEL_SELECTION = ("validation", "none")


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    differs: list[tuple[str, str]] = field(default_factory=list)  # (where, diff)
    shown: set[str] = field(default_factory=set)


# --- what markdown() functions share ------------------------------------------------------------------

def table(head: list[str], rows: list[list], align: str = "") -> str:
    """A markdown table; ``align`` has one letter per column, ``l`` or ``r`` (default: first left, rest right)."""
    align = align or "l" + "r" * (len(head) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = [head, rule, *[[str(cell) for cell in row] for row in rows]]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def pm(pair, digits: int = 3) -> str:
    """``mean ± std`` of a ``[mean, std]`` pair."""
    return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"


def pm_stats(stat: dict | None, fmt: str = ".3f") -> str:
    """``mean ± std`` of a :func:`benchmarks._results.mean_std` dict, each formatted with ``fmt``; ``-``
    where there is none."""
    return "-" if stat is None else f"{format(stat['mean'], fmt)} ± {format(stat['std'], fmt)}"


def source(result: dict, name: str) -> str:
    """``results/NAME.json``, its date: the reference a block gives for its numbers."""
    date = (result.get("date") or result.get("provenance", {}).get("date") or "")[:10]
    return f"`results/{name}`, {date}" if date else f"`results/{name}`"


# --- rendering and checking ---------------------------------------------------------------------------

def load_results(results: Path, report: Report) -> dict[str, dict]:
    """name -> result, for every ``results/*.json`` (not its subfolders); reports what lacks provenance."""
    loaded = {}
    for path in sorted(results.glob("*.json")):
        try:
            result = json.loads(path.read_text())
        except ValueError as exc:
            report.problems.append(f"{_show(path)}: not valid JSON ({exc})")
            continue
        prov = result.get("provenance") or {}
        missing = [k for k in ("script", "commit") if not prov.get(k)]
        if missing:
            report.problems.append(f"{_show(path)}: no provenance ({', '.join(missing)} missing); regenerate it "
                                   "with its benchmark, which writes it through _results.write_result")
        if not result.get("machine"):
            report.problems.append(f"{_show(path)}: no machine")
        report.problems += [f"{_show(path)}: {problem}" for problem in protocol_problems(result)]
        loaded[path.name] = result
    return loaded


def protocol_problems(result: dict) -> list[str]:
    """What ``summary.protocol`` of a result lacks or gets wrong (empty: nothing)."""
    summary = result.get("summary")
    protocol = summary.get("protocol") if isinstance(summary, dict) else None
    if not isinstance(protocol, dict):
        return ["no summary.protocol (the split sizes, model_selection, the seeds, the config and its sha256; "
                "benchmarks._results.protocol builds it)"]
    problems = []
    missing = [key for key in PROTOCOL_KEYS if key not in protocol]
    if missing:
        problems.append(f"summary.protocol lacks {', '.join(missing)}")
    if "model_selection" in protocol and protocol["model_selection"] not in MODEL_SELECTION:
        problems.append(f"summary.protocol.model_selection is {protocol['model_selection']!r}, not "
                        + " or ".join(repr(v) for v in MODEL_SELECTION))
    return problems


def render(result: dict, view: str | None) -> str:
    script = (result.get("provenance") or {}).get("script")
    if not script:
        raise LookupError("its JSON has no provenance.script, the module to render it")
    if not script.startswith("benchmarks."):
        raise LookupError(f"provenance.script {script!r} is not a benchmarks module")
    markdown = getattr(importlib.import_module(script), "markdown", None)
    if markdown is None:
        raise LookupError(f"{script} has no markdown(result)")
    text = markdown(result, view) if view else markdown(result)
    return f"\n{text.strip()}\n\n"


def update(text: str, readme: Path, results: dict[str, dict], report: Report) -> str:
    """``text`` with every block rendered from its JSON; what differed or could not render goes to ``report``."""
    def block(match: re.Match) -> str:
        name, view, body = match["name"], match["view"], match["body"]
        where = f"{_show(readme)}:{text.count(chr(10), 0, match.start()) + 1}: results/{name}" + \
            (f":{view}" if view else "")
        report.shown.add(name)
        if name not in results:
            report.problems.append(f"{where}: block without its JSON (benchmarks/results/{name} is missing)")
            return match[0]
        try:
            new = render(results[name], view)
        except Exception as exc:  # one block that cannot render must not hide the others' state
            report.problems.append(f"{where}: cannot render ({type(exc).__name__}: {exc})")
            return match[0]
        if new != body:
            report.differs.append((where, _diff(body, new)))
        start, end = match.start("body") - match.start(), match.end("body") - match.start()
        return match[0][:start] + new + match[0][end:]

    new_text = BLOCK.sub(block, text)
    closed = len(BLOCK.findall(text))
    if len(OPENING.findall(text)) != closed:
        report.problems.append(f"{_show(readme)}: {len(OPENING.findall(text)) - closed} block(s) opened and never "
                               "closed (<!-- /results/NAME.json --> after the generated text)")
    return new_text


def _diff(old: str, new: str) -> str:
    lines = list(difflib.unified_diff(old.splitlines(), new.splitlines(), "README", "from the JSON", n=0,
                                      lineterm=""))[2:]
    more = f"\n    ... {len(lines) - DIFF_LINES} more diff lines" if len(lines) > DIFF_LINES else ""
    return "\n".join("    " + line for line in lines[:DIFF_LINES]) + more


def _show(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def run(readmes: list[Path], results_dir: Path, check: bool) -> Report:
    report = Report()
    results = load_results(results_dir, report)
    for readme in readmes:
        text = readme.read_text()
        new = update(text, readme, results, report)
        if new != text and not check:
            readme.write_text(new)
    for name in sorted(set(results) - report.shown):
        report.problems.append(f"{_show(results_dir / name)}: orphan, no README block shows it "
                               f"(add <!-- results/{name} --> ... <!-- /results/{name} --> or delete it)")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a README and the JSON disagree")
    parser.add_argument("--readme", type=Path, action="append",
                        help="a README with blocks (repeatable; default: benchmarks/README.md and README.md)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the result JSONs (default: %(default)s)")
    args = parser.parse_args(argv)
    report = run(args.readme or list(READMES), args.results, args.check)
    if args.check:
        report.problems += [f"{where}: differs from its JSON (python -m benchmarks.report rewrites it)\n{diff}"
                            for where, diff in report.differs]
    elif report.differs:
        print(f"rewrote {len(report.differs)} block(s) from their JSON: "
              + ", ".join(where for where, _ in report.differs))
    if report.problems:
        print(f"benchmarks.report: {len(report.problems)} problem(s)\n\n" + "\n".join(report.problems), file=sys.stderr)
        return 1
    print("benchmarks.report: every README block agrees with its JSON")
    return 0


if __name__ == "__main__":
    sys.exit(main())
