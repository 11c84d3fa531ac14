"""`mcpz config get | set | unset | list | path`: the user's settings file, typed and checked."""

from __future__ import annotations

from typing import Annotated

import typer

from mcpz.cli.output import out

app = typer.Typer()
config_app = typer.Typer(help="Read and change your settings (the user config file).", no_args_is_help=True)
app.add_typer(config_app, name="config")

KeyArg = Annotated[str, typer.Argument(metavar="KEY", help="A setting: registry, call_timeout or author.")]


@config_app.command("get")
def get(key: KeyArg) -> None:
    """Print the value in force of one setting (flag > MCPZ_* variable > user config > default)."""
    from mcpz.config import effective, unknown_key

    found = [row for row in effective() if row[0] == key]
    if not found:
        raise unknown_key(key, "the command")
    _, value, source = found[0]
    out().data({"key": key, "value": value, "source": source}, lambda c: c.print(str(value), markup=False))


@config_app.command("set")
def set_(key: KeyArg, value: Annotated[str, typer.Argument(metavar="VALUE", help="The new value.")]) -> None:
    """Set a setting in the user config file (checked first: a URL, a number of seconds, ...)."""
    from mcpz.config import set_value, user_config_path

    stored = set_value(key, value)
    out().info(f"{key} = {stored!r} in {user_config_path()}")
    out().data({"key": key, "value": stored})


@config_app.command("unset")
def unset(key: KeyArg) -> None:
    """Remove a setting from the user config file (the default applies again)."""
    from mcpz.config import unset_value

    removed = unset_value(key)
    out().info(f"{key} removed" if removed else f"{key} was not set")
    out().data({"key": key, "removed": removed})


@config_app.command("list")
def list_() -> None:
    """Every setting: its value in force and where it comes from."""
    from mcpz.config import effective

    rows = effective()
    out().lines(
        [{"key": key, "value": value, "source": source} for key, value, source in rows],
        lambda: [f"{key} = {value!r}  ({source})" for key, value, source in rows],
    )


@config_app.command("path")
def path() -> None:
    """Print where the user config file is (it may not exist yet)."""
    from mcpz.config import user_config_path

    where = user_config_path()
    out().data({"path": str(where), "exists": where.exists()}, lambda c: c.print(str(where), markup=False))
