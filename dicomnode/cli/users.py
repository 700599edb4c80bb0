"""``dicomnode users add|passwd|remove|list``: who may log in to the status page, the API and /metrics."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dicomnode.audit import audit
from dicomnode.cli.common import EXIT_FAILED, EXIT_OK, _config, configure_logging
from dicomnode.web.users import ADMIN_PASSWORD_FILE, MIN_PASSWORD, Role, UserStore, UserStoreError

ROLES_HELP = "admin: read everything and retry jobs; read-only: the status page, the API, previews and /metrics"


def _store(args: argparse.Namespace) -> tuple[UserStore, Path]:
    cfg = _config(args)
    configure_logging(args.log_level or "WARNING", cfg.log_format, cfg.node.audit_path)
    return UserStore(cfg.node.storage_dir / cfg.web.users_file), cfg.node.storage_dir / ADMIN_PASSWORD_FILE


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise UserStoreError("no terminal to ask for the password on: pipe it in with --password-stdin")
    first = getpass.getpass(f"password for {args.name} (at least {MIN_PASSWORD} characters): ")
    if getpass.getpass("again: ") != first:
        raise UserStoreError("the two passwords differ")
    return first


def _forget_first_password(name: str, password_file: Path) -> None:
    """The generated first password is no longer the admin's: remove the file that held it."""
    if name == "admin" and password_file.exists():
        password_file.unlink()
        print(f"removed {password_file} (it held the first, generated password)")


def cmd_users(args: argparse.Namespace) -> int:
    store, password_file = _store(args)
    by = getpass.getuser()
    try:
        if args.action == "list":
            users = sorted(store.users().values(), key=lambda u: u.name)
            if args.json:
                print(json.dumps([{"name": u.name, "role": str(u.role)} for u in users], indent=2))
            else:
                print("\n".join(f"{u.name:<32} {u.role}" for u in users) or f"no users in {store.path}")
            return EXIT_OK
        if args.action == "add":
            store.add(args.name, Role(args.role), _password(args))
            print(f"added {args.name} ({args.role}) to {store.path}")
        elif args.action == "passwd":
            store.set_password(args.name, _password(args))
            print(f"changed the password of {args.name}; their sessions have ended")
            _forget_first_password(args.name, password_file)
        else:
            store.remove(args.name)
            print(f"removed {args.name}; their sessions have ended")
            _forget_first_password(args.name, password_file)
    except UserStoreError as exc:
        print(f"dicomnode users {args.action}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    audit("web_users", action=args.action, user=args.name, role=getattr(args, "role", None), by=by)
    return EXIT_OK


def add_user_commands(sub: Any, common: Callable[..., None]) -> None:
    """Add ``users`` (with ``add``, ``passwd``, ``remove`` and ``list``) to the CLI's subcommands."""
    p = sub.add_parser(
        "users",
        help="manage who may log in to the status page, the JSON API, previews and /metrics",
        description=(
            "Users of the web face, kept in web.users_file (default <storage_dir>/web-users.json, mode 0600) with "
            "argon2id password hashes. Roles: " + ROLES_HELP + ". A running node sees changes at the next request: "
            "a removed user, or one whose password changed, is logged out. On first start with no users the node "
            f"creates 'admin' with a random password in <storage_dir>/{ADMIN_PASSWORD_FILE}; 'users passwd admin' "
            "replaces it and removes that file. Passwords need at least "
            f"{MIN_PASSWORD} characters; they are asked for on the terminal, or read from one line of standard input "
            "with --password-stdin (never give them as arguments: other users can read the process list)."
        ),
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    a = actions.add_parser("add", help="add a user", description="Add a user with a role and a password.")
    common(a)
    a.add_argument("name", help="user name: letters, digits and . _ @ -, up to 64")
    a.add_argument("--role", required=True, choices=[str(r) for r in Role], help=ROLES_HELP)
    a.add_argument("--password-stdin", action="store_true", help="read the password from one line of standard input")

    a = actions.add_parser("passwd", help="change a user's password (their sessions end)",
                           description="Give a user a new password; their open sessions end.")
    common(a)
    a.add_argument("name", help="user name")
    a.add_argument("--password-stdin", action="store_true", help="read the password from one line of standard input")

    a = actions.add_parser("remove", help="remove a user (their sessions end)",
                           description="Remove a user; their open sessions end. The last admin cannot be removed.")
    common(a)
    a.add_argument("name", help="user name")

    a = actions.add_parser("list", help="list users and their roles", description="List the users and their roles (no hashes).")
    common(a)
    a.add_argument("--json", action="store_true", help="print JSON")
    a.set_defaults(name=None)
    p.set_defaults(func=cmd_users)
