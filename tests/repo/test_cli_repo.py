"""The repository commands as a user types them: exit codes, stdout, stderr and --json payloads."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

GIT = shutil.which("git") or "/usr/bin/git"
MANIFEST = '[agent]\nname = "acme/geo"\nversion = "0.1.0"\nkind = "plugin"\n'


def git(cwd: Path, *args: str) -> str:
    return subprocess.run([GIT, *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def agent(cli: Any, tmp_path: Path) -> Path:
    """An agent made with `mcpz init`."""
    result = cli("init", str(tmp_path / "geo"), "--name", "acme/geo", "--template", "plugin")
    assert result.exit_code == 0, result.stderr
    return tmp_path / "geo"


def test_init(cli: Any, tmp_path: Path) -> None:
    result = cli("init", "--name", "acme/geo", "-t", "plugin", "--json", cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["path"] == str(tmp_path)
    assert payload["name"] == "acme/geo" and payload["branch"] == "main" and payload["template"] == "plugin"
    assert payload["commit"] == git(tmp_path, "rev-parse", "HEAD").strip()
    assert "mcpz.toml" in payload["files"]
    assert git(tmp_path, "status", "--porcelain") == ""
    text = cli("init", str(tmp_path / "weather"), "--name", "acme/weather")
    assert text.exit_code == 0
    assert text.stdout.strip() == str(tmp_path / "weather")
    assert "Created acme/weather" in text.stderr and "python template" in text.stderr


def test_init_refusals(cli: Any, tmp_path: Path) -> None:
    bad = cli("init", str(tmp_path / "x"), "--name", "Acme/Geo")
    assert bad.exit_code == 2
    assert 'agent name "Acme/Geo"' in bad.stderr
    assert not (tmp_path / "x").exists()
    unknown = cli("init", str(tmp_path / "x"), "--name", "acme/geo", "--template", "rust")
    assert unknown.exit_code == 2 and 'no template "rust"' in unknown.stderr
    assert not (tmp_path / "x").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy/notes.txt").write_text("mine")
    busy = cli("init", str(tmp_path / "busy"), "--name", "acme/geo")
    assert busy.exit_code == 2 and "not empty" in busy.stderr and "--force" in busy.stderr
    forced = cli("init", str(tmp_path / "busy"), "--name", "acme/geo", "--force")
    assert forced.exit_code == 0
    assert "notes.txt" in git(tmp_path / "busy", "ls-files")
    missing = cli("init", "folder", cwd=tmp_path)
    assert missing.exit_code == 2
    assert "the agent needs a name (e.g. `mcpz init acme/folder`" in missing.stderr
    assert not (tmp_path / "folder").exists()


def test_init_takes_the_name_positionally_into_a_folder_of_its_own(cli: Any, tmp_path: Path) -> None:
    made = cli("init", "acme/weather", "--json", cwd=tmp_path)
    assert made.exit_code == 0, made.stderr
    assert json.loads(made.stdout)["name"] == "acme/weather"
    assert 'name = "acme/weather"' in (tmp_path / "weather" / "mcpz.toml").read_text()
    assert not (tmp_path / "acme").exists()


def test_commit_prints_the_new_id(cli: Any, agent: Path) -> None:
    (agent / "tool.py").write_text("print('hi')\n")
    result = cli("commit", "-m", "add tool", cwd=agent)
    assert result.exit_code == 0, result.stderr
    head = git(agent, "rev-parse", "HEAD").strip()
    assert result.stdout.strip() == head
    assert f"[main {head[:7]}] add tool (1 file changed)" in result.stderr
    assert git(agent, "status", "--porcelain") == ""
    (agent / "tool.py").unlink()
    payload = json.loads(cli("commit", "-m", "drop tool", "--json", cwd=agent).stdout)
    assert payload["commit"] == git(agent, "rev-parse", "HEAD").strip()
    assert payload["committed"] is True and payload["branch"] == "main" and payload["parents"] == [head]
    assert payload["changes"] == [{"path": "tool.py", "change": "deleted"}]
    assert payload["message"] == "drop tool\n"


def test_commit_with_nothing_to_commit(cli: Any, agent: Path) -> None:
    result = cli("commit", "-m", "again", cwd=agent)
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "nothing to commit" in result.stderr
    payload = json.loads(cli("commit", "-m", "again", "--json", cwd=agent).stdout)
    assert payload["commit"] is None and payload["committed"] is False


def test_commit_refuses_an_invalid_manifest(cli: Any, agent: Path) -> None:
    head = git(agent, "rev-parse", "HEAD")
    (agent / "mcpz.toml").write_text(MANIFEST.replace('kind = "plugin"', 'kind = "plugin"\nlicence = "MIT"'))
    result = cli("commit", "-m", "bad", cwd=agent)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith('error: mcpz.toml: unknown key [agent]."licence"')
    assert git(agent, "rev-parse", "HEAD") == head


def test_commit_amend_and_author(cli: Any, agent: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (agent / "a.txt").write_text("a\n")
    cli("commit", "-m", "first try", cwd=agent)
    (agent / "b.txt").write_text("b\n")
    monkeypatch.setenv("MCPZ_AUTHOR", "Env Author <env@example.com>")
    result = cli("commit", "--amend", "-m", "add a and b", cwd=agent)
    assert result.exit_code == 0, result.stderr
    assert git(agent, "log", "--format=%s").splitlines()[:2] == [
        "add a and b",
        "Create acme/geo from the plugin template",
    ]
    assert git(agent, "log", "-1", "--format=%cn <%ce>").strip() == "Env Author <env@example.com>"
    (agent / "c.txt").write_text("c\n")
    flagged = cli("commit", "-m", "c", "--author", "Flag Person <flag@example.com>", cwd=agent)
    assert flagged.exit_code == 0
    assert git(agent, "log", "-1", "--format=%an <%ae>").strip() == "Flag Person <flag@example.com>"
    bad = cli("commit", "-m", "d", "--author", "nobody", cwd=agent)
    assert bad.exit_code == 2 and "Name <email>" in bad.stderr
    no_message = cli("commit", cwd=agent)
    assert no_message.exit_code == 2 and "message" in no_message.stderr


def test_status(cli: Any, agent: Path) -> None:
    clean = cli("status", cwd=agent)
    assert clean.exit_code == 0
    assert clean.stdout == "## main\n"
    assert "nothing to commit, working tree clean" in clean.stderr
    (agent / "README.md").write_text("changed\n")
    (agent / "new.txt").write_text("new\n")
    (agent / "skip.pyc").write_text("ignored by the template's .gitignore\n")
    text = cli("status", cwd=agent)
    assert text.stdout == "## main\n M README.md\n?? new.txt\n"
    assert git(agent, "status", "--porcelain") == " M README.md\n?? new.txt\n"
    payload = json.loads(cli("status", "--json", cwd=agent).stdout)
    assert payload == {
        "branch": "main",
        "head": git(agent, "rev-parse", "HEAD").strip(),
        "clean": False,
        "staged": [],
        "unstaged": [{"path": "README.md", "change": "modified"}],
        "untracked": ["new.txt"],
    }


def test_commands_outside_a_repository(cli: Any, tmp_path: Path) -> None:
    result = cli("status", cwd=tmp_path)
    assert result.exit_code == 2
    assert "not inside an agent repository" in result.stderr and "mcpz init" in result.stderr


def test_log(cli: Any, agent: Path) -> None:
    for i in range(3):
        (agent / "n.txt").write_text(f"{i}\n")
        cli("commit", "-m", f"change {i}", cwd=agent)
    text = cli("log", "-n", "2", cwd=agent)
    assert text.exit_code == 0
    lines = text.stdout.splitlines()
    assert len(lines) == 2
    head = git(agent, "rev-parse", "--short=7", "HEAD").strip()
    assert lines[0].startswith(f"{head} ") and lines[0].endswith("(HEAD -> main) change 2")
    payload = json.loads(cli("log", "--json", cwd=agent).stdout)
    assert [c["id"] for c in payload] == git(agent, "log", "--format=%H").split()
    assert payload[0]["refs"] == ["HEAD -> main"]
    assert set(payload[0]) >= {"id", "parents", "author", "author_date", "message", "tree"}
    assert json.loads(cli("log", "HEAD~3", "--json", cwd=agent).stdout)[0]["parents"] == []


def test_log_of_an_empty_repository(cli: Any, tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    result = cli("log", "--json", cwd=tmp_path)
    assert result.exit_code == 0
    assert json.loads(result.stdout) == []


def test_diff(cli: Any, agent: Path) -> None:
    assert cli("diff", cwd=agent).stdout == ""
    (agent / "README.md").write_text("new readme\n")
    result = cli("diff", cwd=agent)
    assert result.exit_code == 0
    assert result.stdout == git(agent, "diff", "HEAD")
    assert "+new readme" in result.stdout
    payload = json.loads(cli("diff", "--json", cwd=agent).stdout)
    assert payload["from"] == git(agent, "rev-parse", "HEAD").strip() and payload["to"] is None
    assert [(f["path"], f["change"], f["additions"]) for f in payload["files"]] == [
        ("README.md", "modified", 1)
    ]
    cli("commit", "-m", "readme", cwd=agent)
    between = cli("diff", "HEAD~1", "HEAD", cwd=agent)
    assert between.stdout == git(agent, "diff", "HEAD~1", "HEAD")
    too_many = cli("diff", "a", "b", "c", cwd=agent)
    assert too_many.exit_code == 2
    unknown = cli("diff", "nope", cwd=agent)
    assert unknown.exit_code == 5 and 'unknown revision "nope"' in unknown.stderr


def test_show(cli: Any, agent: Path) -> None:
    (agent / "README.md").write_text("v2\n")
    (agent / "src").mkdir()
    (agent / "src/x.py").write_text("x = 1\n")
    cli("commit", "-m", "readme v2\n\nwith a body", cwd=agent)
    head = git(agent, "rev-parse", "HEAD").strip()
    shown = cli("show", cwd=agent)
    assert shown.exit_code == 0
    assert shown.stdout.startswith(f"commit {head} (HEAD -> main)\nAuthor: Test User <test@example.com>\n")
    assert "    readme v2\n\n    with a body\n" in shown.stdout
    assert "diff --git a/README.md b/README.md" in shown.stdout
    payload = json.loads(cli("show", "HEAD", "--json", cwd=agent).stdout)
    assert payload["commit"]["id"] == head and payload["files"][0]["path"] == "README.md"
    old = cli("show", "HEAD~1:README.md", cwd=agent)
    assert old.stdout == git(agent, "show", "HEAD~1:README.md")
    listing = cli("show", "HEAD:", cwd=agent)
    assert "mcpz.toml\n" in listing.stdout and "src/\n" in listing.stdout
    file_json = json.loads(cli("show", "HEAD:README.md", "--json", cwd=agent).stdout)
    assert file_json["content"] == "v2\n" and file_json["encoding"] == "utf-8" and file_json["type"] == "blob"
    missing = cli("show", "HEAD:nope.txt", cwd=agent)
    assert missing.exit_code == 5 and 'no "nope.txt"' in missing.stderr


def test_release(cli: Any, agent: Path) -> None:
    result = cli("release", "--bump", "patch", cwd=agent)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "v0.1.1"
    assert "Released acme/geo 0.1.1 as v0.1.1" in result.stderr
    assert git(agent, "describe").strip() == "v0.1.1"
    assert git(agent, "status", "--porcelain") == ""
    payload = json.loads(cli("release", "1.0.0", "--json", cwd=agent).stdout)
    assert payload == {
        "name": "acme/geo",
        "version": "1.0.0",
        "previous_version": "0.1.1",
        "tag": "v1.0.0",
        "commit": git(agent, "rev-parse", "HEAD").strip(),
        "committed": True,
    }
    again = cli("release", "1.0.0", cwd=agent)
    assert again.exit_code == 2 and "v1.0.0 already exists" in again.stderr
    (agent / "wip.txt").write_text("unfinished")
    dirty = cli("release", "--bump", "minor", cwd=agent)
    assert dirty.exit_code == 2 and "uncommitted changes: wip.txt" in dirty.stderr
    assert cli("release", "--bump", "huge", cwd=agent).exit_code == 2
    assert cli("release", cwd=agent).exit_code == 2
    assert cli("show", "v0.1.1:mcpz.toml", cwd=agent).stdout.count('version = "0.1.1"') == 1
    assert cli("show", "1.0.0", "--json", cwd=agent).exit_code == 0


def test_repository_made_by_git_works_with_every_command(cli: Any, tmp_path: Path) -> None:
    git(tmp_path, "init", "-q", "-b", "main")
    (tmp_path / "mcpz.toml").write_text(MANIFEST)
    (tmp_path / "a.txt").write_text("a\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "by git")
    assert cli("status", cwd=tmp_path).stdout == "## main\n"
    (tmp_path / "a.txt").write_text("b\n")
    assert cli("diff", cwd=tmp_path).stdout == git(tmp_path, "diff")
    committed = cli("commit", "-m", "by mcpz", cwd=tmp_path)
    assert committed.stdout.strip() == git(tmp_path, "rev-parse", "HEAD").strip()
    assert git(tmp_path, "status", "--porcelain") == ""
    log = json.loads(cli("log", "--json", cwd=tmp_path).stdout)
    assert [c["message"] for c in log] == ["by mcpz\n", "by git\n"]
    assert cli("show", "HEAD~1:a.txt", cwd=tmp_path).stdout == "a\n"
    assert cli("release", "--bump", "major", cwd=tmp_path).stdout.strip() == "v1.0.0"
    git(tmp_path, "fsck", "--strict")
    assert git(tmp_path, "log", "--format=%s").splitlines() == ["Release 1.0.0", "by mcpz", "by git"]
