"""Agent repositories through dulwich, checked against the real `git` program.

Every behaviour that git also has is compared with git itself: the tree `mcpz commit` records
must be the tree `git add -A && git commit` records for the same files, `mcpz status` must
print what `git status --porcelain` prints, and every repository must pass `git fsck --strict`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mcpz.errors import ManifestError, NotFoundError, RepositoryError, UsageError
from mcpz.manifest import parse_manifest
from mcpz.repo.diff import Change, file_patch
from mcpz.repo.model import (
    FileAtRev,
    Status,
    bump_version,
    choose_identity,
    parse_identity,
    split_rev,
    split_rev_path,
)
from mcpz.repo.release import manifest_with_version_text
from mcpz.repo.repository import AgentRepo, clean_message, init_agent
from mcpz.repo.store import RawObject, index_bytes, parse_index, write_pack

GIT = shutil.which("git") or "/usr/bin/git"
MANIFEST = '[agent]\nname = "acme/geo"\nversion = "0.1.0"\nkind = "plugin"\n'


def git(cwd: Path, *args: str, check: bool = True) -> str:
    done = subprocess.run([GIT, *args], cwd=cwd, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {done.stderr}")
    return done.stdout


def write(root: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def git_repo(root: Path, files: dict[str, str | bytes], commit: bool = True) -> Path:
    """A repository made by git itself, with one commit of `files`."""
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "-b", "main")
    write(root, {"mcpz.toml": MANIFEST, **files})
    if commit:
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", "made by git")
    return root


def assert_git_happy(root: Path) -> None:
    git(root, "fsck", "--strict", "--no-dangling")
    assert git(root, "status", "--porcelain", "-uall") == ""


# --- pure rules ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "part", "expected"),
    [
        ("0.1.0", "patch", "0.1.1"),
        ("0.1.0", "minor", "0.2.0"),
        ("0.1.9", "major", "1.0.0"),
        ("1.2", "patch", "1.2.1"),
        ("1.2.0rc1", "patch", "1.2.0"),
        ("1.2.0rc1", "minor", "1.2.0"),
        ("1.2.3rc1", "minor", "1.3.0"),
        ("2.0.0b1", "major", "2.0.0"),
        ("2.1.0b1", "major", "3.0.0"),
        ("1.0.0.post1", "patch", "1.0.1"),
    ],
)
def test_bump_version(version: str, part: str, expected: str) -> None:
    assert bump_version(version, part) == expected  # type: ignore[arg-type]


def test_bump_version_refuses_unknown_part() -> None:
    with pytest.raises(UsageError):
        bump_version("1.0.0", "huge")  # type: ignore[arg-type]


def test_split_rev() -> None:
    assert split_rev("HEAD") == ("HEAD", [])
    assert split_rev("HEAD~2^2") == ("HEAD", [("~", 2), ("^", 2)])
    assert split_rev("v1.0.0^") == ("v1.0.0", [("^", 1)])
    assert split_rev("main~") == ("main", [("~", 1)])
    assert split_rev_path("HEAD:src/a.py") == ("HEAD", "src/a.py")
    assert split_rev_path(":mcpz.toml") == ("HEAD", "mcpz.toml")
    assert split_rev_path("HEAD:") == ("HEAD", "")
    assert split_rev_path("abc123") == ("abc123", None)


def test_identity_precedence() -> None:
    env = {"GIT_AUTHOR_NAME": "Env", "GIT_AUTHOR_EMAIL": "env@x"}
    fallback = "me <me@host>"
    assert choose_identity("Set <set@x>", env, "Cfg", "cfg@x", fallback) == "Set <set@x>"
    assert choose_identity(None, env, "Cfg", "cfg@x", fallback) == "Env <env@x>"
    assert choose_identity(None, {}, "Cfg", "cfg@x", fallback) == "Cfg <cfg@x>"
    assert choose_identity(None, {}, "Cfg", None, fallback) == "Cfg <me@host>"
    assert choose_identity(None, {}, None, None, fallback) == fallback
    assert parse_identity(" Ada Lovelace  <ada@example.com> ") == ("Ada Lovelace", "ada@example.com")
    with pytest.raises(UsageError, match="Name <email>"):
        parse_identity("just a name")


def test_clean_message() -> None:
    assert clean_message("  \n\nfix it  \n\n\n\nmore\n\n") == "fix it\n\nmore\n"
    with pytest.raises(UsageError):
        clean_message(" \n \n")


def test_manifest_version_edit_keeps_comments_and_layout() -> None:
    text = (
        "# my agent\n[agent]\nname = 'acme/geo'   # the name\nversion = '0.1.0'  # bump me\n"
        'kind = "plugin"\n\n[dependencies]\n"acme/x" = ">=0.1"\n'
    )
    edited = manifest_with_version_text(text, parse_manifest(text), "0.2.0")
    assert edited == text.replace("version = '0.1.0'", "version = '0.2.0'")
    assert parse_manifest(edited).dependencies == {"acme/x": ">=0.1"}


def test_file_patch_matches_git_format() -> None:
    change = Change(b"a.txt", (0o100644, b"1" * 40), (0o100644, b"2" * 40))
    patch = file_patch(change, b"one\ntwo\nthree\n", b"one\n2\nthree")
    assert patch.text == (
        "diff --git a/a.txt b/a.txt\nindex 1111111..2222222 100644\n--- a/a.txt\n+++ b/a.txt\n"
        "@@ -1,3 +1,3 @@\n one\n-two\n-three\n+2\n+three\n\\ No newline at end of file\n"
    )
    assert (patch.additions, patch.deletions, patch.binary) == (2, 2, False)
    binary = file_patch(Change(b"x.bin", None, (0o100644, b"3" * 40)), b"", b"\0\1")
    assert binary.binary and "Binary files /dev/null and b/x.bin differ" in binary.text


def test_status_porcelain_lines() -> None:
    from mcpz.repo.model import FileChange

    status = Status(
        "main",
        None,
        staged=(FileChange("b", "modified"), FileChange("c", "added")),
        unstaged=(FileChange("b", "deleted"), FileChange("a", "modified")),
        untracked=("d",),
    )
    assert status.porcelain() == [" M a", "MD b", "A  c", "?? d"]
    assert not status.clean


# --- git's file formats --------------------------------------------------------------------------


def test_index_written_by_git_round_trips(tmp_path: Path) -> None:
    root = git_repo(tmp_path / "r", {"a.txt": "a\n", "d/b.txt": "b\n", "d/e/c": "c\n"})
    os.chmod(root / "d/b.txt", 0o755)
    git(root, "add", "-A")
    (root / "intent.txt").write_text("new\n")
    git(root, "add", "-N", "intent.txt")  # an extended flag: forces index version 3
    data = (root / ".git/index").read_bytes()
    entries, version = parse_index(data)
    assert version == 3
    assert sorted(entries) == [b"a.txt", b"d/b.txt", b"d/e/c", b"intent.txt", b"mcpz.toml"]
    rewritten = index_bytes(entries, version)
    assert parse_index(rewritten) == (entries, version)
    (root / ".git/index").write_bytes(rewritten)
    assert git(root, "status", "--porcelain") == "M  d/b.txt\n A intent.txt\n"
    with pytest.raises(ValueError):
        parse_index(data[:-1] + bytes([data[-1] ^ 1]))


def test_index_v4_works(tmp_path: Path) -> None:
    root = git_repo(tmp_path / "r", {"a/long/path/file.txt": "x\n", "a/long/path/other.txt": "y\n"})
    git(root, "update-index", "--index-version", "4")
    with AgentRepo.open(root) as repo:
        assert repo.status().clean
        (root / "a/long/path/file.txt").write_text("changed\n")
        result = repo.commit("edit")
    assert [c.path for c in result.changes] == ["a/long/path/file.txt"]
    assert_git_happy(root)


def test_pack_written_in_one_pass_is_valid(tmp_path: Path) -> None:
    root = git_repo(tmp_path / "r", {}, commit=False)
    objects = [RawObject.of(3, f"blob {i}\n".encode() * (i + 1)) for i in range(150)]
    pack = write_pack(str(root / ".git/objects/pack"), objects)
    verify = git(root, "verify-pack", "-v", pack.replace(".pack", ".idx"))
    assert f"{objects[7].id.decode()} blob" in verify
    assert git(root, "cat-file", "-p", objects[3].id.decode()) == "blob 3\n" * 4


# --- repositories made by mcpz -------------------------------------------------------------------


def test_init_agent_makes_an_ordinary_git_repository(tmp_path: Path) -> None:
    result = init_agent(tmp_path / "geo", "acme/geo", template="plugin")
    root = Path(result.path)
    assert result.branch == "main"
    assert "mcpz.toml" in result.files and ".gitignore" in result.files
    assert git(root, "rev-parse", "--abbrev-ref", "HEAD").strip() == "main"
    assert git(root, "rev-parse", "HEAD").strip() == result.commit.commit.id  # type: ignore[union-attr]
    assert_git_happy(root)
    assert sorted(git(root, "ls-files").split()) == sorted(result.files)
    assert "commit (initial): Create acme/geo" in git(root, "reflog", "-1", "--format=%gs")


def test_init_refuses_before_writing(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="agent name"):
        init_agent(tmp_path / "bad", "Acme/Geo", template="plugin")
    with pytest.raises(UsageError, match="no template"):
        init_agent(tmp_path / "bad", "acme/geo", template="nope")
    assert not (tmp_path / "bad").exists()
    busy = tmp_path / "busy"
    write(busy, {"notes.txt": "mine\n"})
    with pytest.raises(UsageError, match="not empty"):
        init_agent(busy, "acme/geo", template="plugin")
    assert not (busy / ".git").exists()
    result = init_agent(busy, "acme/geo", template="plugin", force=True)
    assert "notes.txt" in git(busy, "ls-files")
    assert result.commit.committed


def test_init_into_folder_made_by_git_init(tmp_path: Path) -> None:
    root = tmp_path / "g"
    root.mkdir()
    git(root, "init", "-q", "-b", "trunk")
    result = init_agent(root, "acme/geo", template="plugin")
    assert result.branch == "trunk"
    assert_git_happy(root)


def test_commit_records_the_tree_git_would(tmp_path: Path) -> None:
    """Same files, one side committed by git and the other by mcpz: same tree id."""
    files: dict[str, str | bytes] = {
        "mcpz.toml": MANIFEST,
        ".gitignore": "*.log\n/build/\ncache/\n!keep.log\nsub/**/*.tmp\n",
        "keep.log": "kept by negation\n",
        "debug.log": "ignored\n",
        "build/out.bin": b"\0\1ignored",
        "src/build/real.py": "not ignored: /build/ is anchored\n",
        "src/cache/x": "ignored at any depth\n",
        "sub/a/b/c.tmp": "ignored by **\n",
        "sub/a/b/c.txt": "kept\n",
        "sub/.gitignore": "*.txt\n!important.txt\n",
        "sub/notes.txt": "ignored by the nested .gitignore\n",
        "sub/important.txt": "re-included\n",
        "private/secret": "ignored by info/exclude\n",
        "global.bak": "ignored by core.excludesFile\n",
        "bin/run.sh": "#!/bin/sh\necho hi\n",
        "data/blob.bin": bytes(range(256)),
        "empty": "",
        "unicodé/fïle.txt": "names are bytes\n",
    }
    excludes = tmp_path / "global-ignore"
    excludes.write_text("*.bak\n")
    with open(os.environ["GIT_CONFIG_GLOBAL"], "a") as f:
        f.write(f"[core]\n\texcludesFile = {excludes}\n")
    sides = {}
    for side in ("git", "mcpz"):
        root = tmp_path / side
        root.mkdir()
        git(root, "init", "-q", "-b", "main")
        write(root, files)
        (root / ".git/info/exclude").write_text("private/\n")
        os.chmod(root / "bin/run.sh", 0o755)
        os.symlink("src/build/real.py", root / "link")
        sides[side] = root
    git(sides["git"], "add", "-A")
    git(sides["git"], "commit", "-q", "-m", "by git")
    with AgentRepo.open(sides["mcpz"]) as repo:
        result = repo.commit("by mcpz")
    assert result.commit is not None
    tree = {side: git(root, "rev-parse", "HEAD^{tree}").strip() for side, root in sides.items()}
    assert tree["mcpz"] == tree["git"], git(sides["mcpz"], "ls-files")
    assert result.commit.tree == tree["mcpz"]
    assert_git_happy(sides["mcpz"])
    assert git(sides["mcpz"], "log", "--format=%H").split() == [result.commit.id]


def test_status_agrees_with_git_status(tmp_path: Path) -> None:
    root = git_repo(tmp_path / "r", {"a.txt": "a\n", "b.txt": "b\n", "c.txt": "c\n", "d/e.txt": "e\n"})
    (root / "a.txt").write_text("changed\n")  # unstaged modification
    (root / "b.txt").unlink()  # unstaged deletion
    (root / "c.txt").write_text("staged\n")
    git(root, "add", "c.txt")  # staged modification
    (root / "c.txt").write_text("staged, then changed again\n")  # ... and unstaged on top
    write(root, {"new/f.txt": "untracked\n", "g.txt": "added\n", "inner/x": "in its own repo\n"})
    git(root / "inner", "init", "-q")
    git(root, "add", "g.txt")  # staged addition
    git(root, "rm", "-q", "--cached", "d/e.txt")  # staged deletion, file now untracked
    with AgentRepo.open(root / "d") as repo:  # opened from a sub-folder
        status = repo.status()
    expected = git(root, "status", "--porcelain", "-uall").splitlines()
    assert status.porcelain() == expected
    assert status.branch == "main"
    assert status.head == git(root, "rev-parse", "HEAD").strip()


def test_status_refreshes_stat_data_so_git_stays_clean(tmp_path: Path) -> None:
    root = git_repo(tmp_path / "r", {"a.txt": "a\n"})
    os.utime(root / "a.txt", (1, 1))  # new stat data, same content
    with AgentRepo.open(root) as repo:
        assert repo.status().clean
    entries, _ = parse_index((root / ".git/index").read_bytes())
    assert entries[b"a.txt"].mtime[0] == 1  # type: ignore[union-attr]
    assert_git_happy(root)


def test_same_size_edit_with_old_mtime_is_seen(tmp_path: Path) -> None:
    """Stat data is compared in full (ctime too), so restoring mtime does not hide an edit."""
    root = git_repo(tmp_path / "r", {"a.txt": "aaaa\n"})
    with AgentRepo.open(root) as repo:
        repo.commit("refresh")  # nothing to commit, but the index gets our stat data
        before = os.stat(root / "a.txt")
        (root / "a.txt").write_text("bbbb\n")
        os.utime(root / "a.txt", ns=(before.st_atime_ns, before.st_mtime_ns))
        assert [c.path for c in repo.status().unstaged] == ["a.txt"]
        result = repo.commit("edit")
    assert [(c.path, c.change) for c in result.changes] == [("a.txt", "modified")]


def test_commit_stages_additions_edits_deletions_and_modes(tmp_path: Path) -> None:
    root = git_repo(tmp_path / "r", {"a.txt": "a\n", "gone/b.txt": "b\n", "x.sh": "echo\n"})
    (root / "a.txt").write_text("edited\n")
    shutil.rmtree(root / "gone")
    (root / "new.txt").write_text("new\n")
    os.chmod(root / "x.sh", 0o755)
    with AgentRepo.open(root) as repo:
        result = repo.commit("all of it")
    assert [(c.path, c.change) for c in result.changes] == [
        ("a.txt", "modified"),
        ("gone/b.txt", "deleted"),
        ("new.txt", "added"),
        ("x.sh", "modified"),
    ]
    assert git(root, "ls-tree", "HEAD", "x.sh").startswith("100755")
    assert_git_happy(root)
    assert git(root, "log", "--format=%s").splitlines() == ["all of it", "made by git"]


def test_tracked_file_in_ignored_folder_stays_tracked(tmp_path: Path) -> None:
    root = git_repo(tmp_path / "r", {"vendor/lib.py": "v1\n"})
    (root / ".gitignore").write_text("vendor/\n")
    (root / "vendor/lib.py").write_text("v2\n")
    (root / "vendor/other.py").write_text("untracked and ignored\n")
    with AgentRepo.open(root) as repo:
        repo.commit("ignore vendor")
    assert git(root, "show", "HEAD:vendor/lib.py") == "v2\n"
    assert "vendor/other.py" not in git(root, "ls-files")
    assert_git_happy(root)


def test_many_new_files_go_into_one_pack(tmp_path: Path) -> None:
    root = git_repo(tmp_path / "r", {f"f/{i:03d}.txt": f"{i}\n" for i in range(150)}, commit=False)
    with AgentRepo.open(root) as repo:
        result = repo.commit("lots")
        assert repo.read_file("HEAD", "f/042.txt").content == b"42\n"
    assert len(result.changes) == 151
    assert list((root / ".git/objects/pack").glob("pack-*.idx"))
    assert_git_happy(root)


def test_invalid_manifest_is_refused_and_nothing_written(tmp_path: Path) -> None:
    root = git_repo(tmp_path / "r", {"a.txt": "a\n"})
    head = git(root, "rev-parse", "HEAD")
    index = (root / ".git/index").read_bytes()
    (root / "mcpz.toml").write_text(MANIFEST.replace('"0.1.0"', '"one"'))
    (root / "a.txt").write_text("changed\n")
    with AgentRepo.open(root) as repo, pytest.raises(ManifestError, match=r"\[agent\]\.version"):
        repo.commit("nope")
    assert git(root, "rev-parse", "HEAD") == head
    assert (root / ".git/index").read_bytes() == index
    (root / "mcpz.toml").unlink()
    with AgentRepo.open(root) as repo, pytest.raises(ManifestError, match=r"no mcpz\.toml"):
        repo.commit("nope")


def test_nothing_to_commit(tmp_path: Path) -> None:
    root = git_repo(tmp_path / "r", {"a.txt": "a\n"})
    (root / "ignored.log").write_text("x")
    (root / ".gitignore").write_text("*.log\n")
    with AgentRepo.open(root) as repo:
        assert repo.commit("add ignore").committed
        result = repo.commit("again")
    assert result.commit is None and result.changes == ()
    assert len(git(root, "log", "--format=%H").split()) == 2


def test_amend(tmp_path: Path) -> None:
    root = git_repo(tmp_path / "r", {"a.txt": "a\n"})
    with AgentRepo.open(root) as repo:
        (root / "b.txt").write_text("b\n")
        first = repo.commit("add b")
        (root / "c.txt").write_text("c\n")
        amended = repo.commit(None, amend=True)
        assert first.commit and amended.commit
        assert amended.amended
        assert amended.commit.parents == first.commit.parents
        assert amended.commit.message == "add b\n"
        assert amended.commit.author == first.commit.author
        assert [c.path for c in amended.changes] == ["b.txt", "c.txt"]
        reworded = repo.commit("add b and c", amend=True)
        assert reworded.commit and reworded.commit.summary == "add b and c"
    assert git(root, "log", "--format=%s").splitlines() == ["add b and c", "made by git"]
    assert_git_happy(root)
    empty = git_repo(tmp_path / "empty", {}, commit=False)
    with AgentRepo.open(empty) as repo, pytest.raises(UsageError, match="nothing to amend"):
        repo.commit(None, amend=True)
    with AgentRepo.open(empty) as repo, pytest.raises(UsageError, match="message"):
        repo.commit(None)


def test_author_comes_from_setting_then_repo_config_then_global(tmp_path: Path) -> None:
    root = git_repo(tmp_path / "r", {})
    with AgentRepo.open(root) as repo:
        assert repo.identity() == "Test User <test@example.com>"  # conftest's global config
    git(root, "config", "user.name", "Repo Person")
    git(root, "config", "user.email", "repo@example.com")
    with AgentRepo.open(root) as repo:
        assert repo.identity() == "Repo Person <repo@example.com>"
        (root / "x").write_text("x")
        repo.commit("by setting", author="Ada <ada@example.com>")
    assert git(root, "log", "-1", "--format=%an <%ae>|%cn <%ce>") == (
        "Ada <ada@example.com>|Ada <ada@example.com>\n"
    )
    with AgentRepo.open(root, env={"HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1"}) as repo:
        assert repo.identity() == "Repo Person <repo@example.com>"


def test_resolve_revisions(tmp_path: Path) -> None:
    root = git_repo(tmp_path / "r", {"a.txt": "1\n"})
    with AgentRepo.open(root) as repo:
        (root / "a.txt").write_text("2\n")
        second = repo.commit("two").commit
        assert second is not None
        git(root, "tag", "light")
        first = second.parents[0]
        assert repo.resolve("HEAD") == second.id
        assert repo.resolve("HEAD~1") == repo.resolve("HEAD^") == repo.resolve("main~") == first
        assert repo.resolve(second.id[:8]) == second.id
        assert repo.resolve("light") == repo.resolve("refs/tags/light") == second.id
        with pytest.raises(NotFoundError):
            repo.resolve("HEAD~5")
        with pytest.raises(NotFoundError, match="unknown revision"):
            repo.resolve("nosuchthing")
        blob = git(root, "rev-parse", "HEAD:a.txt").strip()
        with pytest.raises(UsageError, match="not a commit"):
            repo.resolve(blob)


def test_read_file_and_folders(tmp_path: Path) -> None:
    root = git_repo(tmp_path / "r", {"src/app.py": "print(1)\n", "src/lib/x.py": ""})
    with AgentRepo.open(root) as repo:
        (root / "src/app.py").write_text("print(2)\n")
        repo.commit("two")
        assert repo.read_file("HEAD~1", "src/app.py").content == b"print(1)\n"
        shown = repo.show("HEAD:src")
        assert isinstance(shown, FileAtRev) and shown.is_dir
        assert [(e.name, e.kind) for e in shown.entries or ()] == [("app.py", "blob"), ("lib", "tree")]
        with pytest.raises(NotFoundError, match="src/nope"):
            repo.read_file("HEAD", "src/nope")
        with pytest.raises(NotFoundError):
            repo.read_file("HEAD", "src/app.py/deeper")


def test_diff_and_show_match_git(tmp_path: Path) -> None:
    root = git_repo(tmp_path / "r", {"a.txt": "".join(f"line {i}\n" for i in range(20)), "b.txt": "b\n"})
    (root / "a.txt").write_text("".join(f"line {i}\n" for i in range(20) if i != 10) + "tail\n")
    (root / "b.txt").unlink()
    with AgentRepo.open(root) as repo:
        worktree = repo.diff()
        assert worktree.patch == git(root, "diff", "HEAD")
        assert worktree.new is None and worktree.old == repo.head_id()
        (root / "c.txt").write_text("new\n")  # untracked files count: commit would add them
        assert [f.path for f in repo.diff().files] == ["a.txt", "b.txt", "c.txt"]
        repo.commit("change")
        between = repo.diff("HEAD~1", "HEAD")
        shown = repo.show_commit("HEAD")
    assert between.patch == git(root, "diff", "HEAD~1", "HEAD")
    assert shown.diff.patch == between.patch
    assert [(f.path, f.change) for f in between.files] == [
        ("a.txt", "modified"),
        ("b.txt", "deleted"),
        ("c.txt", "added"),
    ]
    assert between.files[0].additions == 1 and between.files[0].deletions == 1


def test_log_order_limit_and_refs(tmp_path: Path) -> None:
    root = git_repo(tmp_path / "r", {"a.txt": "0\n"})
    with AgentRepo.open(root) as repo:
        for i in range(1, 4):
            (root / "a.txt").write_text(f"{i}\n")
            repo.commit(f"c{i}")
        repo.tag("v9", "HEAD~1")
        entries = repo.log()
        assert [e.commit.id for e in entries] == git(root, "log", "--format=%H").split()
        assert entries[0].refs == ("HEAD -> main",)
        assert entries[1].refs == ("tag: v9",)
        assert [e.commit.summary for e in repo.log(limit=2)] == ["c3", "c2"]
    empty = git_repo(tmp_path / "empty", {}, commit=False)
    with AgentRepo.open(empty) as repo:
        assert repo.log() == []
        assert repo.head_id() is None


def test_release_sets_version_commits_and_tags(tmp_path: Path) -> None:
    root = git_repo(tmp_path / "r", {"a.txt": "a\n"})
    (root / "mcpz.toml").write_text("# keep me\n" + MANIFEST)
    git(root, "commit", "-qam", "comment")
    with AgentRepo.open(root) as repo:
        result = repo.release(bump="minor")
        assert (result.version, result.previous_version, result.tag) == ("0.2.0", "0.1.0", "v0.2.0")
        assert result.committed
        assert (root / "mcpz.toml").read_text() == "# keep me\n" + MANIFEST.replace("0.1.0", "0.2.0")
        with pytest.raises(UsageError, match=r"v0\.2\.0 already exists"):
            repo.release("0.2.0")
        (root / "a.txt").write_text("dirty\n")
        with pytest.raises(UsageError, match=r"uncommitted changes: a\.txt"):
            repo.release(bump="patch")
        repo.commit("more")
        with pytest.raises(UsageError):
            repo.release("1.0.0", bump="patch")
        with pytest.raises(ManifestError, match="PEP 440"):
            repo.release("one")
        assert repo.release("1.0.0").commit.summary == "Release 1.0.0"
    assert git(root, "describe").strip() == "v1.0.0"
    assert git(root, "cat-file", "-t", "v0.2.0").strip() == "tag"
    assert git(root, "show", "v0.2.0:mcpz.toml").count('version = "0.2.0"') == 1
    assert "acme/geo 0.2.0" in git(root, "cat-file", "-p", "v0.2.0")
    assert_git_happy(root)


def test_release_of_an_already_declared_version_tags_head(tmp_path: Path) -> None:
    root = git_repo(tmp_path / "r", {"a.txt": "a\n"})
    head = git(root, "rev-parse", "HEAD").strip()
    with AgentRepo.open(root) as repo:
        result = repo.release("0.1.0")
    assert not result.committed and result.commit.id == head
    assert git(root, "rev-parse", "v0.1.0^{commit}").strip() == head


def test_open_outside_a_repository(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not inside an agent repository"):
        AgentRepo.open(tmp_path)


def test_locked_index_is_reported(tmp_path: Path) -> None:
    root = git_repo(tmp_path / "r", {"a.txt": "a\n"})
    (root / ".git/index.lock").write_text("")
    (root / "a.txt").write_text("b\n")
    with AgentRepo.open(root) as repo, pytest.raises(RepositoryError, match="locked"):
        repo.commit("x")
