"""`dispatcher users`: the operator console's users."""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.table import Table

from dispatcher.cli.common import CliContext, echo_json, fail, guarded
from dispatcher.config import logs
from dispatcher.model.errors import UnknownUser, UserError, UserExists
from dispatcher.store.users import MIN_PASSWORD_LENGTH, ROLES, UserStore

__all__ = ["users"]

_log = logs.get_logger("dispatcher.store.users")


@click.group(
    help="""Users of the operator console (`dispatcher serve`, then open /ui/).

\b
A viewer reads everything; an operator also replays and purges dead letters.
Passwords are stored only as Argon2id hashes (slow, salted).

\b
  printf '%s\\n' "$PASSWORD" | dispatcher users add alice --role operator --password-stdin
  dispatcher users list
  dispatcher users remove alice          # also ends her sessions"""
)
def users() -> None:
    pass


def _read_password(password_stdin: bool) -> str:
    if password_stdin:
        line = sys.stdin.readline()
        # One line: the trailing newline of `echo`/`printf '%s\n'` is not part of it.
        return line[:-1] if line.endswith("\n") else line
    if not sys.stdin.isatty():
        raise click.UsageError("give --password-stdin to read the password from standard input")
    value: str = click.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    return value


@users.command(
    help=f"""Create a console user (--role viewer by default).

The password (at least {MIN_PASSWORD_LENGTH} characters) is read from standard input
with --password-stdin (one line), or asked twice on a terminal. --replace sets a new
password or role for an existing user and ends their sessions."""
)
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), default="viewer", show_default=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--replace", is_flag=True, help="Overwrite an existing user.")
@click.pass_obj
@guarded
def add(obj: CliContext, name: str, role: str, password_stdin: bool, replace: bool) -> None:
    password = _read_password(password_stdin)
    store = UserStore(obj.backend)
    try:
        user = store.add(name, role=role, password=password, replace=replace)
    except UserExists as exc:
        fail(str(exc), code=1)
    except UserError as exc:
        fail(str(exc), code=2)
    _log.info("users.added", user=user.name, role=user.role, replaced=replace)
    click.echo(f"user {user.name} ({user.role}) {'replaced' if replace else 'added'}", err=True)


@users.command("list", help="List console users: name, role, created.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array of {name, role, created_at}.")
@click.pass_obj
@guarded
def list_(obj: CliContext, as_json: bool) -> None:
    found = UserStore(obj.backend).list()
    if as_json:
        echo_json([u.to_dict() for u in found])
        return
    if not found:
        click.echo("no console users; add one with: dispatcher users add NAME --password-stdin")
        return
    table = Table()
    for column in ("name", "role", "created"):
        table.add_column(column)
    for user in found:
        table.add_row(user.name, user.role, user.created_at or "")
    Console().print(table)


@users.command(help="Delete a console user and end every session of theirs.")
@click.argument("name")
@click.pass_obj
@guarded
def remove(obj: CliContext, name: str) -> None:
    try:
        UserStore(obj.backend).remove(name)
    except UnknownUser as exc:
        fail(str(exc), code=1)
    _log.info("users.removed", user=name)
    click.echo(f"user {name} removed", err=True)
