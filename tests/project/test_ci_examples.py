"""The CI examples in examples/ci/ run, step by step, against a live registry, so they cannot rot.

For each workflow the test makes a real agent repository (`mcpz init`, a dependency added with
`mcpz add`, committed with git and tagged `v0.1.0`), then plays the CI: every job gets a fresh
clone checked out at the tag (a detached HEAD, as `actions/checkout` and GitLab's runner leave it),
the CI's variables are set (`MCPZ_REGISTRY`, and `MCPZ_TOKEN` from the "secrets"; `GITHUB_REF` or
`CI_COMMIT_TAG`), and each `run:` step (GitHub) or each job's `script:` (GitLab) runs with bash,
in order, failing as the CI would (`bash -eo pipefail`).

What is not run: `uses:` steps (the checkout is the clone made here; setup-python is this
interpreter), and script lines that start with `pip install`: the mcpz under test is the local
editable install, whose `bin/` folder is put first on PATH. Job conditions (`if:` / `rules:`) are
evaluated for the forms the examples use, and anything else fails the test, so an example cannot
drift into something this runner silently skips.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import LiveRegistry
from gitutil import git, init_agent

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "ci"
TAG = "v0.1.0"


@dataclass
class Step:
    job: str
    name: str
    script: str


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


# --- GitHub Actions --------------------------------------------------------------------------------

_EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def _github_value(text: str, context: Mapping[str, str]) -> str:
    def sub(match: re.Match[str]) -> str:
        expression = match.group(1)
        assert expression in context, f"the runner does not know ${{{{ {expression} }}}}"
        return context[expression]

    return _EXPR.sub(sub, str(text))


def _github_condition(condition: str, ref: str) -> bool:
    match = re.fullmatch(r"startsWith\(github\.ref, '([^']*)'\)", condition.strip())
    assert match, f"the runner does not evaluate the condition {condition!r}"
    return ref.startswith(match.group(1))


def github_jobs(
    workflow: dict[str, Any], ref: str, context: Mapping[str, str]
) -> list[tuple[dict[str, str], list[Step]]]:
    """(env, steps) of each job that runs for `ref`, in the order `needs:` gives."""
    # YAML 1.1 reads the key `on:` as True.
    triggers = workflow.get("on", workflow.get(True))  # type: ignore[call-overload]
    assert triggers and "push" in triggers, "the workflow runs on push"
    jobs: dict[str, Any] = workflow["jobs"]
    order: list[str] = []
    while len(order) < len(jobs):
        ready = [
            name
            for name, job in jobs.items()
            if name not in order and all(dep in order for dep in _as_list(job.get("needs")))
        ]
        assert ready, "the jobs' needs form a cycle"
        order.extend(ready)
    out = []
    for name in order:
        job = jobs[name]
        if "if" in job and not _github_condition(job["if"], ref):
            continue
        env = {
            k: _github_value(v, context) for k, v in {**workflow.get("env", {}), **job.get("env", {})}.items()
        }
        steps = []
        for i, step in enumerate(job["steps"]):
            if "uses" in step:
                continue
            assert step.get("shell", "bash") == "bash"
            env_step = {k: _github_value(v, context) for k, v in step.get("env", {}).items()}
            assert not env_step, "the runner does not set step env yet"
            steps.append(Step(name, step.get("name", f"step {i}"), _without_pip_install(step["run"])))
        out.append((env, steps))
    return out


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


# --- GitLab CI ------------------------------------------------------------------------------------

_GITLAB_KEYWORDS = {"image", "variables", "stages", "default", "include", "workflow", "before_script"}


def _gitlab_rule(rule: Mapping[str, Any], variables: Mapping[str, str]) -> bool:
    match = re.fullmatch(r"\$(\w+) =~ /(.*)/", str(rule["if"]).strip())
    assert match, f"the runner does not evaluate the rule {rule!r}"
    return re.search(match.group(2), variables.get(match.group(1), "")) is not None


def gitlab_jobs(
    pipeline: dict[str, Any], variables: Mapping[str, str]
) -> list[tuple[dict[str, str], list[Step]]]:
    stages = pipeline.get("stages", ["build", "test", "deploy"])
    jobs = {
        name: job
        for name, job in pipeline.items()
        if name not in _GITLAB_KEYWORDS and not name.startswith(".")
    }
    assert "before_script" not in pipeline, "the runner does not run a global before_script"
    out = []
    for stage in stages:
        for name, job in jobs.items():
            if job.get("stage", "test") != stage:
                continue
            rules = job.get("rules")
            if rules is not None and not any(_gitlab_rule(rule, variables) for rule in rules):
                continue
            env = {
                k: str(v) for k, v in {**pipeline.get("variables", {}), **job.get("variables", {})}.items()
            }
            # GitLab runs a job's script lines in one shell, stopping at the first failure.
            script = "\n".join(_without_pip_install(line) for line in job["script"])
            out.append((env, [Step(name, "script", script)]))
    return out


def _without_pip_install(script: str) -> str:
    return "\n".join(line for line in str(script).splitlines() if not line.strip().startswith("pip install"))


# --- playing the CI -------------------------------------------------------------------------------


def run_steps(
    jobs: list[tuple[dict[str, str], list[Step]]], repo: Path, work: Path, base_env: Mapping[str, str]
) -> list[str]:
    """Run every job in a fresh clone at the tag; return the names of the steps run."""
    ran = []
    for n, (env, steps) in enumerate(jobs):
        checkout = work / f"job{n}"
        git("clone", "-q", str(repo), str(checkout))
        git("-c", "advice.detachedHead=false", "checkout", "-q", TAG, cwd=checkout)
        for step in steps:
            done = subprocess.run(
                ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step.script],
                cwd=checkout,
                env={**base_env, **env},
                stdin=subprocess.DEVNULL,  # no terminal, as on a CI runner
                capture_output=True,
                text=True,
                timeout=120,
            )
            if done.returncode != 0:
                raise StepFailed(step, done)
            ran.append(f"{step.job}: {step.name}")
    return ran


class StepFailed(AssertionError):
    def __init__(self, step: Step, done: subprocess.CompletedProcess[str]) -> None:
        super().__init__(
            f"{step.job} / {step.name} failed with {done.returncode}:\n{step.script}\n"
            f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
        )
        self.step = step
        self.done = done


def ci_env(registry: LiveRegistry, token: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["CI"] = "true"
    env["MCPZ_REGISTRY"] = registry.url  # also set by the workflow, as its users would
    env["MCPZ_TOKEN"] = token
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


@pytest.fixture
def agent_repo(
    cli, sqlite_registry: LiveRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, str]:  # type: ignore[no-untyped-def]
    """An agent made by `mcpz init` with a locked dependency, committed and tagged v0.1.0."""
    token = sqlite_registry.account("acme", "read,publish")
    dep = tmp_path / "geo"
    init_agent(dep, "acme/geo", "1.0.0")
    git("tag", "v1.0.0", cwd=dep)
    git("push", "-q", sqlite_registry.git_url("acme/geo", token), "main", "v1.0.0", cwd=dep)

    monkeypatch.setenv("MCPZ_REGISTRY", sqlite_registry.url)
    repo = tmp_path / "app"
    made = cli("init", str(repo), "--name", "acme/app")
    assert made.exit_code == 0, made.stderr
    added = cli("add", "acme/geo", cwd=repo)
    assert added.exit_code == 0, added.stderr
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "depend on acme/geo", cwd=repo)
    git("tag", TAG, cwd=repo)
    return repo, token


def _published(registry: LiveRegistry, name: str) -> dict[str, str]:
    import httpx2

    response = httpx2.get(f"{registry.url}/v1/agents/{name}", timeout=30)
    if response.status_code == 404:
        return {}
    return {v["version"]: v["commit"] for v in response.json()["versions"]}


def _jobs(kind: str, registry: LiveRegistry, token: str, ref: str) -> list[tuple[dict[str, str], list[Step]]]:
    if kind == "github":
        context = {"vars.MCPZ_REGISTRY": registry.url, "secrets.MCPZ_TOKEN": token}
        return github_jobs(_load(EXAMPLES / "github-actions.yml"), ref, context)
    tag = ref.removeprefix("refs/tags/") if ref.startswith("refs/tags/") else ""
    return gitlab_jobs(_load(EXAMPLES / "gitlab-ci.yml"), {"CI_COMMIT_TAG": tag})


def _tag_env(kind: str) -> dict[str, str]:
    if kind == "github":
        return {"GITHUB_ACTIONS": "true", "GITHUB_REF": f"refs/tags/{TAG}", "GITHUB_REF_NAME": TAG}
    return {"GITLAB_CI": "true", "CI_COMMIT_TAG": TAG, "CI_COMMIT_REF_NAME": TAG}


@pytest.mark.parametrize("kind", ["github", "gitlab"])
def test_the_pipeline_checks_tests_smoke_tests_and_publishes_on_a_tag(
    kind: str, agent_repo: tuple[Path, str], sqlite_registry: LiveRegistry, tmp_path: Path
) -> None:
    repo, token = agent_repo
    jobs = _jobs(kind, sqlite_registry, token, f"refs/tags/{TAG}")
    assert len(jobs) == 2, "a version tag runs the test job and the publish job"
    env = {**ci_env(sqlite_registry, token), **_tag_env(kind)}
    ran = run_steps(jobs, repo, tmp_path / "ci", env)
    assert len(ran) >= 2
    tagged = git("rev-parse", f"{TAG}^{{commit}}", cwd=repo).stdout.strip()
    assert _published(sqlite_registry, "acme/app") == {"0.1.0": tagged}
    # A push on a branch runs the test job only.
    branch_jobs = _jobs(kind, sqlite_registry, token, "refs/heads/main")
    assert len(branch_jobs) == 1


@pytest.mark.parametrize("kind", ["github", "gitlab"])
def test_the_pipeline_fails_on_a_stale_lock(
    kind: str, agent_repo: tuple[Path, str], sqlite_registry: LiveRegistry, tmp_path: Path
) -> None:
    repo, token = agent_repo
    manifest = repo / "mcpz.toml"
    manifest.write_text(manifest.read_text().replace('"acme/geo" = "~=1.0"', '"acme/geo" = ">=1.0"'))
    git("commit", "-q", "-am", "loosen without locking", cwd=repo)
    git("tag", "-f", TAG, cwd=repo)
    jobs = _jobs(kind, sqlite_registry, token, f"refs/tags/{TAG}")
    env = {**ci_env(sqlite_registry, token), **_tag_env(kind)}
    with pytest.raises(StepFailed) as failed:
        run_steps(jobs, repo, tmp_path / "ci", env)
    assert failed.value.done.returncode == 9
    assert "mcpz lock --check" in failed.value.step.script
    assert 'acme/geo "~=1.0" -> ">=1.0"' in failed.value.done.stderr
    assert _published(sqlite_registry, "acme/app") == {}
