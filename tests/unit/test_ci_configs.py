"""The CI pipelines of configs/ci: their structure, and every command they run exists as written.

Each ``run:`` (GitHub Actions) and ``script:`` (GitLab CI) line is split like a shell would;
``farm`` commands go through ``farm.ops.cli.build_parser()`` and ``pytest`` commands through
pytest's own parser with the installed plugins, so an unknown subcommand or option fails here
rather than in a user's pipeline. The few system commands are allow-listed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence, Set

import pytest
import yaml

from farm.ops.cli import build_parser
from farm.ops.targets import TARGETS, target_named

PROJECT = Path(__file__).resolve().parents[2]
CI = PROJECT / "configs" / "ci"
GITHUB = CI / "github-actions.yml"
GITLAB = CI / "gitlab-ci.yml"
SECRET = "${{ secrets.FARM_TRACKER }}"
#: The pytest options every pipeline's test run gives, with their values.
RUN_OPTIONS = {"--tracker": "$FARM_TRACKER", "--device-key": "$DEVICE_KEY", "--device-strict": None}
#: Options whose value is a path the command writes.
OUTPUT_OPTIONS = {"farm": ("-o", "--output"), "pytest": ("--junitxml",), "curl": ("--output",)}
#: Where GitLab's benchmarks-compare job downloads the baseline from (the artifacts of benchmarks-baseline).
BASELINE_URL = (
    "$CI_API_V4_URL/projects/$CI_PROJECT_ID/jobs/artifacts/$CI_DEFAULT_BRANCH/download?job=benchmarks-baseline"
)
#: The benchmark jobs: the one that saves main's baseline and the one that compares a branch with it.
BENCHMARK_JOBS = {GITHUB.name: ("benchmarks",), GITLAB.name: ("benchmarks-baseline", "benchmarks-compare")}
CROSS_PACKAGES = {name for target in TARGETS.values() for name in (target.compiler_package, target.libc_package)}
#: Programs that are not ours: subcommand -> the arguments it may have.
ALLOWED: Dict[str, Dict[str, Set[str]]] = {
    "apt-get": {"update": set(), "install": {"-y"} | CROSS_PACKAGES},
    "pip": {"install": {".", "pytest-remotedev"}},
    "curl": {
        "--fail": {"--location", "--output", "baseline.zip", "--header", "JOB-TOKEN: $CI_JOB_TOKEN", BASELINE_URL}
    },
    "zipfile": {"-e": {"baseline.zip", "."}},
}
#: Top-level keys of a GitLab CI file that are not jobs.
GITLAB_KEYWORDS = {"stages", "default", "variables", "workflow", "include", "image", "services", "cache"}
#: Job keys that bring commands from elsewhere than ``script:``, which this test does not read.
SCRIPT_ELSEWHERE = {"before_script", "after_script", "extends", "trigger"}
SHELL_OPERATOR = re.compile(r"[();<>|&]+")
ADDRESS = re.compile(r"[A-Za-z0-9.-]+:\d+")


@dataclass(frozen=True)
class Command:
    """One shell command of a pipeline's job: ``program`` with ``args`` (``sudo`` and ``python -m`` dropped)."""

    pipeline: str
    job: str
    program: str
    args: Sequence[str]

    def __str__(self) -> str:
        return "%s:%s:%s" % (self.pipeline, self.job, " ".join([self.program, *self.args]))


def load(path: Path) -> Dict[Any, Any]:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def split_command(line: str) -> List[str]:
    """``line`` as a shell splits it; one simple command per line, no expressions for GitHub to paste in."""
    assert "${{" not in line, "pass %r through env:, not an expression pasted into the script" % line
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    argv = list(lexer)
    operators = [token for token in argv if SHELL_OPERATOR.fullmatch(token)]
    assert not operators, "write one command per line, without %s: %r" % (operators, line)
    return argv


def command(pipeline: str, job: str, line: str) -> Command:
    argv = split_command(line)
    if argv[0] == "sudo":
        argv = argv[1:]
    if argv[0] in ("python", "python3") and argv[1:2] == ["-m"]:
        argv = argv[2:]
    return Command(pipeline, job, argv[0], tuple(argv[1:]))


def script_lines(text: str) -> List[str]:
    """The lines of a ``run:`` block (or a list of paths), comments and blank lines left out."""
    lines = (line.strip() for line in text.replace("\\\n", " ").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def github_commands(doc: Dict[Any, Any]) -> List[Command]:
    return [
        command(GITHUB.name, name, line)
        for name, job in doc["jobs"].items()
        for step in job["steps"]
        for line in script_lines(step.get("run", ""))
    ]


def gitlab_jobs(doc: Dict[Any, Any]) -> Dict[str, Dict[str, Any]]:
    return {name: job for name, job in doc.items() if name not in GITLAB_KEYWORDS and not name.startswith(".")}


def gitlab_commands(doc: Dict[Any, Any]) -> List[Command]:
    """The ``script:`` lines of every job (a pipeline with other places for commands fails its structure test)."""
    return [command(GITLAB.name, name, line) for name, job in gitlab_jobs(doc).items() for line in job["script"]]


PIPELINES = {GITHUB.name: load(GITHUB), GITLAB.name: load(GITLAB)}
COMMANDS = github_commands(PIPELINES[GITHUB.name]) + gitlab_commands(PIPELINES[GITLAB.name])


def strings(value: Any) -> Iterator[str]:
    """Every string in a parsed YAML document, keys included."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from strings(key)
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)
    elif isinstance(value, str):
        yield value


def option_values(args: Sequence[str], names: Sequence[str]) -> List[str]:
    """The values given to the options ``names``, as ``--name VALUE`` or ``--name=VALUE``."""
    values = []
    for index, token in enumerate(args):
        name, equals, value = token.partition("=")
        if name in names:
            values.append(value if equals else args[index + 1])
    return values


# --- the real parsers ----------------------------------------------------------------------


def farm_subcommands() -> Dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (subparsers,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return dict(subparsers.choices)


def parse_farm(args: Sequence[str]) -> argparse.Namespace:
    """``farm ARGS`` through the real parser: the subcommand exists, each long option is its own (no abbreviation)."""
    subcommands = farm_subcommands()
    assert args and args[0] in subcommands, "farm has no subcommand %r (it has: %s)" % (
        args[0] if args else "",
        ", ".join(sorted(subcommands)),
    )
    known = {name for action in subcommands[args[0]]._actions for name in action.option_strings}
    unknown = [token for token in args[1:] if token.startswith("--") and token.split("=")[0] not in known]
    assert not unknown, "farm %s has no option %s (it has: %s)" % (args[0], unknown, ", ".join(sorted(known)))
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        try:
            return build_parser().parse_args(list(args))
        except SystemExit:
            pytest.fail("farm %s: %s" % (" ".join(args), errors.getvalue()))


def parse_pytest(args: Sequence[str], pytester: pytest.Pytester) -> pytest.Config:
    """``pytest ARGS`` through pytest's parser, with the installed plugins (xdist, remotedev) loaded."""
    try:
        return pytester.parseconfig(*args)
    except pytest.UsageError as exc:
        pytest.fail("pytest %s: %s" % (" ".join(args), exc))


def inputs(command: Command, pytester: pytest.Pytester) -> List[str]:
    """The paths ``farm`` or ``pytest`` read: their positional arguments."""
    if command.program == "pytest":
        return list(parse_pytest(command.args, pytester).args)
    if command.program != "farm":
        return []
    namespace = parse_farm(command.args)
    positional = [action.dest for action in farm_subcommands()[command.args[0]]._actions if not action.option_strings]
    paths: List[str] = []
    for dest in positional:
        value = getattr(namespace, dest)
        paths += value if isinstance(value, list) else [value]
    return paths


def saved_runs(command: Command) -> Set[str]:
    """The run file a ``pytest --device-benchmark-save=NAME`` writes: STORAGE/NAME.json."""
    if command.program != "pytest":
        return set()
    storage = option_values(command.args, ("--device-benchmark-storage",)) or [os.path.join(".benchmarks", "device")]
    names = option_values(command.args, ("--device-benchmark-save",))
    return {os.path.normpath(os.path.join(storage[-1], name + ".json")) for name in names}


def in_repository(pattern: str) -> bool:
    return bool(list(PROJECT.glob(pattern.rstrip("/"))))


def artifact_paths(pipeline: str, only_job: str = "") -> List[str]:
    """The paths a pipeline (or its job ``only_job``) keeps or publishes as artifacts and reports."""
    doc = PIPELINES[pipeline]
    if pipeline == GITHUB.name:
        steps = [step for name, job in doc["jobs"].items() if only_job in ("", name) for step in job["steps"]]
        uploads = [step for step in steps if step.get("uses", "").startswith("actions/upload-artifact@")]
        return [path for step in uploads for path in script_lines(step["with"]["path"])]
    paths = []
    for name, job in gitlab_jobs(doc).items():
        if only_job not in ("", name):
            continue
        artifacts = job.get("artifacts", {})
        paths += artifacts.get("paths", []) + list(artifacts.get("reports", {}).values())
    return paths


def commands_of(pipeline: str, program: str = "", job: str = "") -> List[Command]:
    """The pipeline's commands, in order: all, or those of ``program`` and of ``job``."""
    return [
        each
        for each in COMMANDS
        if each.pipeline == pipeline and program in ("", each.program) and job in ("", each.job)
    ]


def junit_report(pipeline: str) -> str:
    (run,) = commands_of(pipeline, "pytest", "boards")
    (report,) = option_values(run.args, ("--junitxml",))
    return report


# --- every command exists -------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_command_exists_as_written(command: Command, pytester: pytest.Pytester) -> None:
    if command.program == "farm":
        parse_farm(command.args)
    elif command.program == "pytest":
        parse_pytest(command.args, pytester)
    else:
        assert command.program in ALLOWED, "%s is neither farm, pytest nor allow-listed" % command.program
        subcommands = ALLOWED[command.program]
        assert command.args and command.args[0] in subcommands, command
        extra = set(command.args[1:]) - subcommands[command.args[0]]
        assert not extra, "%s %s: %s not allow-listed" % (command.program, command.args[0], sorted(extra))


def test_our_programs_are_installed_by_the_package() -> None:
    for program, distribution in (("farm", "pytest-remotedev"), ("pytest", "pytest")):
        scripts = metadata.distribution(distribution).entry_points
        assert program in {entry.name for entry in scripts if entry.group == "console_scripts"}
    installs = [each for each in COMMANDS if each.program == "pip"]
    assert {each.pipeline for each in installs} == set(PIPELINES)


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_paths_exist_or_are_made_first(pipeline: str, pytester: pytest.Pytester) -> None:
    made: Set[str] = set()
    for each in commands_of(pipeline):
        for path in inputs(each, pytester):
            assert in_repository(path) or os.path.normpath(path) in made, (
                "%s reads %s, which is neither in the repository nor made before it" % (each, path)
            )
        made |= {os.path.normpath(path) for path in option_values(each.args, OUTPUT_OPTIONS.get(each.program, ()))}
        made |= saved_runs(each)
        if each.program == "zipfile":  # the baseline downloaded from the job that saved it
            made |= {os.path.normpath(path) for path in artifact_paths(pipeline, "benchmarks-baseline")}
    for path in artifact_paths(pipeline):
        assert os.path.normpath(path) in made, "%s keeps %s, which no command makes" % (pipeline, path)


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_cross_compiler_of_the_target_is_installed(pipeline: str) -> None:
    builds = [each for each in commands_of(pipeline, "farm") if each.args[0] == "build"]
    assert builds, "%s cross-compiles nothing" % pipeline
    for build in builds:
        packages = {arg for each in commands_of(pipeline, "apt-get", build.job) for arg in each.args}
        for target in option_values(build.args, ("--target",)):
            needed = target_named(target)
            assert {needed.compiler_package, needed.libc_package} <= packages, (build, packages)


# --- what the pipelines do ----------------------------------------------------------------


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_tests_run_on_the_farm_with_xdist(pipeline: str, pytester: pytest.Pytester) -> None:
    (run,) = commands_of(pipeline, "pytest", "boards")
    for name, value in RUN_OPTIONS.items():
        assert name in run.args, run
        if value is not None:
            assert option_values(run.args, (name,)) == [value], run
    assert parse_pytest(run.args, pytester).getoption("numprocesses") == 4


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_no_tracker_address_is_written_down(pipeline: str) -> None:
    for text in strings(PIPELINES[pipeline]):
        for token in text.split():
            assert not ADDRESS.fullmatch(token.strip("\"'")), "%s names an address: %r" % (pipeline, text)
        for name in ("REMOTEDEV_TRACKER", "TVM_TRACKER_HOST"):
            assert name not in text, "%s sets the tracker through %s" % (pipeline, name)


def test_github_takes_the_tracker_from_a_secret() -> None:
    doc = PIPELINES[GITHUB.name]
    blocks = [doc.get("env", {})] + [job.get("env", {}) for job in doc["jobs"].values()]
    blocks += [step.get("env", {}) for job in doc["jobs"].values() for step in job["steps"]]
    assert {block["FARM_TRACKER"] for block in blocks if "FARM_TRACKER" in block} == {SECRET}
    boards = doc["jobs"]["boards"]
    assert boards["env"]["FARM_TRACKER"] == SECRET
    assert boards["env"]["DEVICE_KEY"] == "${{ matrix.device-key }}" and boards["strategy"]["matrix"]["device-key"]


def test_github_publishes_junit() -> None:
    doc = PIPELINES[GITHUB.name]
    triggers = doc.get("on", doc.get(True))  # YAML 1.1 reads a bare `on` as true
    assert {"push", "pull_request"} <= set(triggers)
    assert doc["permissions"]["checks"] == "write"  # the report step adds a check run
    steps = doc["jobs"]["boards"]["steps"]
    uploads = [step for step in steps if step.get("uses", "").startswith("actions/upload-artifact@")]
    reports = [step for step in steps if step.get("uses", "").startswith("mikepenz/action-junit-report@")]
    assert [junit_report(GITHUB.name) in script_lines(step["with"]["path"]) for step in uploads] == [True]
    assert [step["with"]["report_paths"] for step in reports] == [junit_report(GITHUB.name)]
    assert all(step["if"] == "always()" for step in uploads + reports)


def test_gitlab_stages_and_junit_report() -> None:
    doc = PIPELINES[GITLAB.name]
    jobs = gitlab_jobs(doc)
    assert "default" not in doc and not [name for name, job in jobs.items() if set(job) & SCRIPT_ELSEWHERE]
    assert doc["stages"] == ["test"] and list(jobs) == ["boards", *BENCHMARK_JOBS[GITLAB.name]]
    boards = jobs["boards"]
    assert boards["stage"] == "test"
    assert boards["artifacts"]["reports"]["junit"] == junit_report(GITLAB.name)
    assert boards["artifacts"]["when"] == "always"
    assert all(entry["DEVICE_KEY"] for entry in boards["parallel"]["matrix"])


def test_gitlab_takes_the_tracker_from_a_project_variable() -> None:
    doc = PIPELINES[GITLAB.name]
    blocks = [doc.get("variables", {}), doc.get("default", {}).get("variables", {})]
    blocks += [job.get("variables", {}) for job in gitlab_jobs(doc).values()]
    assert not [block for block in blocks if "FARM_TRACKER" in block], "FARM_TRACKER belongs in the CI/CD settings"


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_benchmarks_save_on_main_and_compare_elsewhere(pipeline: str, pytester: pytest.Pytester) -> None:
    runs = [run for job in BENCHMARK_JOBS[pipeline] for run in commands_of(pipeline, "pytest", job)]
    assert len(runs) == 2, runs
    saving, comparing = [parse_pytest(run.args, pytester) for run in runs]
    for config, run in zip((saving, comparing), runs):
        for name, value in RUN_OPTIONS.items():
            assert name in run.args, run
            if value is not None:
                assert option_values(run.args, (name,)) == [value], run
        assert config.getoption("numprocesses") is None, "benchmarks run one at a time: %s" % run
        assert config.getoption("remotedev_benchmark_storage") == "benchmarks"
    assert saving.getoption("remotedev_benchmark_save") == "main"
    assert saving.getoption("remotedev_benchmark_compare") is None
    assert comparing.getoption("remotedev_benchmark_save") is None
    assert comparing.getoption("remotedev_benchmark_compare") == "main"
    assert comparing.getoption("remotedev_benchmark_fail") == "median:10%"
    assert "benchmarks/main.json" in artifact_paths(pipeline)


def test_github_benchmarks_save_only_on_main() -> None:
    steps = PIPELINES[GITHUB.name]["jobs"]["benchmarks"]["steps"]
    conditions = {step.get("name", step.get("uses", "")): step.get("if") for step in steps}
    assert conditions["Save the baseline (main)"] == "github.ref == 'refs/heads/main'"
    assert (
        conditions["Download the baseline of main"]
        == conditions["Compare with main"]
        != conditions["Save the baseline (main)"]
    )
    [download] = [step for step in steps if step.get("name") == "Download the baseline of main"]
    [upload] = [step for step in steps if step.get("with", {}).get("path") == "benchmarks/main.json"]
    assert download["with"]["name"] == upload["with"]["name"] and download["with"]["branch"] == "main"


def test_gitlab_benchmarks_save_only_on_the_default_branch() -> None:
    jobs = gitlab_jobs(PIPELINES[GITLAB.name])
    baseline, compare = (jobs[name] for name in BENCHMARK_JOBS[GITLAB.name])
    assert baseline["rules"] == [{"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"}]
    assert compare["rules"] == [{"if": "$CI_COMMIT_BRANCH != $CI_DEFAULT_BRANCH"}]
    assert baseline["artifacts"]["paths"][0] == "benchmarks/main.json"
