"""Administration commands: ``tileserver users|tokens|slides|audit ...``.

Every change is written to the audit trail as an administrative action. Secrets (setup
links, tokens) are printed once, as the last line of output, and stored only hashed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from tileserver.config import Settings, check_command_line_url
from tileserver.errors import TileserverError
from tileserver.security import audit_streams as streams
from tileserver.security.accounts import ROLES, SCOPES, Accounts
from tileserver.security.audit import (
    AUDIT_LOG_USED,
    INSTANCES_ACCESSED,
    SECURITY_CONFIGURATION,
    SECURITY_ROLES_CHANGED,
    USER_SECURITY_ATTRIBUTES_CHANGED,
    AuditLog,
    export,
    verify,
)
from tileserver.security.audit_sink import WRITER_ROLE, init_database, open_audit_log
from tileserver.security.checkpoints import (
    append_checkpoint,
    create_signing_key,
    make_checkpoint,
    verify_with_checkpoints,
)
from tileserver.security.database import connect
from tileserver.security.keys import KeyRing, make_private_dir
from tileserver.security.login import ENROL_TTL, LINK_TTL
from tileserver.security.signed_urls import signing_keys
from tileserver.security.slide_labels import (
    KEEP,
    LabelStore,
    SlideLabels,
    check_case,
    check_scan_date,
    check_text,
)
from tileserver.slide_ids import is_slide_id

ADMIN = "cli-admin"


def _open(settings: Settings) -> tuple[Accounts, AuditLog]:
    home = settings.home
    keyring = KeyRing(home)
    make_private_dir(home)
    accounts = Accounts(settings.state_database(), keyring.service_key("totp"))
    audit = open_audit_log(home, keyring.service_key("audit"), settings.audit_database)
    return accounts, audit


def _base(args: argparse.Namespace) -> str:
    return str(args.url).rstrip("/")


def cmd_users(args: argparse.Namespace) -> int:
    accounts, audit = _open(args.settings)
    try:
        return _users(args, accounts, audit)
    finally:
        audit.close()


def _users(args: argparse.Namespace, accounts: Accounts, audit: AuditLog) -> int:
    action = args.users_command

    def record(change: str, user: str, event: int = USER_SECURITY_ATTRIBUTES_CHANGED) -> None:
        audit.append(
            event, action="U", user=ADMIN, role="admin", detail={"change": change, "target": user}
        )

    if action == "list":
        for each in accounts.users():
            state = "disabled" if each.disabled else ("active" if each.pw_hash else "enrolling")
            print(f"{each.name:24} {each.role:12} {state}")
        return 0
    if action == "bootstrap":
        token = accounts.issue_bootstrap(ENROL_TTL)  # retires any earlier link
        if token is None:
            raise TileserverError("this server already has users; use `tileserver users add`")
        record("issued bootstrap setup link", "-")
        print(
            "one-time setup link for the first administrator (valid 24 h, single use;"
            " any earlier one no longer works):"
        )
        print(f"{_base(args)}/login?setup={token}")
        return 0
    if action == "add":
        if accounts.user(args.name):
            raise TileserverError(f"user {args.name!r} exists; use `tileserver users reset`")
        accounts.add_pending(args.name, args.role)
        token = accounts.issue_one_time("enrol", args.name, args.role, ENROL_TTL)
        record(f"added with role {args.role}", args.name)
        print(f"one-time enrolment link for {args.name} (valid 24 h, single use):")
        print(f"{_base(args)}/login?setup={token}")
        return 0
    if action == "reset":
        user = accounts.user(args.name)
        if user is None:
            raise TileserverError(f"no user {args.name!r}")
        accounts.reset(args.name)
        accounts.set_disabled(args.name, False)
        token = accounts.issue_one_time("enrol", args.name, user.role, ENROL_TTL)
        record("reset password and TOTP; sessions ended", args.name)
        print(f"one-time enrolment link for {args.name} (valid 24 h, single use):")
        print(f"{_base(args)}/login?setup={token}")
        return 0
    if action in ("disable", "enable"):
        accounts.set_disabled(args.name, action == "disable")
        record(f"{action}d" + ("; sessions ended" if action == "disable" else ""), args.name)
        print(f"{args.name}: {action}d")
        return 0
    if action == "grant":
        if args.revoke:
            accounts.revoke_grant(args.name, args.collection)
            change = f"revoked access to collection {args.collection}"
        else:
            accounts.grant(args.name, args.collection, args.labels)
            change = f"granted collection {args.collection}" + (
                " with labels" if args.labels else ""
            )
        record(change, args.name, SECURITY_ROLES_CHANGED)
        print(f"{args.name}: {change}")
        return 0
    if action == "login-link":
        if accounts.user(args.name) is None:
            raise TileserverError(f"no user {args.name!r}")
        token = accounts.issue_one_time("link", args.name, None, LINK_TTL)
        record("issued a one-time loopback login link", args.name)
        print(f"one-time login link for {args.name} (10 minutes; loopback servers only):")
        print(f"{_base(args)}/auth/link?token={token}")
        return 0
    raise AssertionError(action)


def cmd_tokens(args: argparse.Namespace) -> int:
    accounts, audit = _open(args.settings)
    try:
        return _tokens(args, accounts, audit)
    finally:
        audit.close()


def _tokens(args: argparse.Namespace, accounts: Accounts, audit: AuditLog) -> int:
    if args.tokens_command == "list":
        for name, granted, within, expires in accounts.tokens():
            until = time.strftime("%Y-%m-%d", time.gmtime(expires)) if expires else "never"
            print(f"{name:24} scopes={granted} collections={within or 'all'} expires={until}")
        return 0
    if args.tokens_command == "revoke":
        accounts.revoke_token(args.name)
        audit.append(
            SECURITY_ROLES_CHANGED,
            action="D",
            user=ADMIN,
            role="admin",
            detail={"change": "revoked token", "target": args.name},
        )
        print(f"token {args.name} revoked")
        return 0
    scopes = frozenset(s.strip() for s in args.scope.split(",") if s.strip())
    collections = frozenset(args.collection) if args.collection else None
    expires = time.time() + args.expires_days * 86400 if args.expires_days else None
    token = accounts.create_token(args.name, scopes, collections, expires)
    audit.append(
        SECURITY_ROLES_CHANGED,
        action="C",
        user=ADMIN,
        role="admin",
        detail={"change": "created token", "target": args.name, "scopes": sorted(scopes)},
    )
    summary = (
        f"token {args.name}: scopes {','.join(sorted(scopes))}; "
        f"collections {','.join(sorted(collections)) if collections else 'all'}"
    )
    if args.certificate_only:  # the secret is dropped here: no bearer can ever use it
        print(f"{summary}; for client certificates with common name {args.name!r} only")
        return 0
    print(f"{summary}; shown once:")
    print(token)
    return 0


def cmd_urls(args: argparse.Namespace) -> int:
    """Signing keys of signed URLs: list, rotate (new key signs), retire (its URLs stop)."""
    accounts, audit = _open(args.settings)
    keys = signing_keys(accounts, KeyRing(args.settings.home))  # the database's, if shared
    try:
        if args.urls_command == "list":
            kids = keys.kids()
            for kid in kids:
                print(f"url key {kid}{' (signs)' if kid == kids[-1] else ''}")
            return 0
        if args.urls_command == "rotate":
            kid = keys.rotate()
            detail = {"change": "url signing key rotated", "target": kid}
        else:
            keys.retire(args.kid)
            detail = {"change": "url signing key retired", "target": args.kid}
        audit.append(SECURITY_CONFIGURATION, action="U", user=ADMIN, role="admin", detail=detail)
    finally:
        audit.close()
    print(f"{detail['change']}: {detail['target']}")
    return 0


def assign_collection(settings: Settings, slide_id: str, collection: str) -> None:
    """Put a slide into a collection (case); recorded as an administrative action."""
    if not is_slide_id(slide_id):
        raise TileserverError(f"not a slide ID: {slide_id[:40]!r}")
    accounts, audit = _open(settings)
    try:
        accounts.assign(slide_id, collection)
        audit.append(
            SECURITY_ROLES_CHANGED,
            action="U",
            user=ADMIN,
            role="admin",
            obj=slide_id,
            detail={"change": f"assigned to collection {collection}"},
        )
    finally:
        audit.close()


def label_slide(
    settings: Settings,
    slide_id: str,
    *,
    case: str | None,
    block: str | None,
    stain: str | None,
    scan_date: str | None,
) -> SlideLabels:
    """Set a slide's case (its collection), block, stain and scan date (None: keep, "":
    clear); checked before anything is written, recorded as an administrative action."""
    if not is_slide_id(slide_id):
        raise TileserverError(f"not a slide ID: {slide_id[:40]!r}")
    new_block = KEEP if block is None else check_text("block", block)
    new_stain = KEEP if stain is None else check_text("stain", stain)
    new_date = KEEP if scan_date is None else check_scan_date(scan_date)
    changes = {
        name: value or ""
        for name, value in (("block", new_block), ("stain", new_stain), ("scan_date", new_date))
        if value is not KEEP
    }
    collection = None if case is None else check_case(case)
    if collection is None and not changes:
        raise TileserverError("nothing to label: give --case, --block, --stain or --scan-date")
    if collection is not None:
        assign_collection(settings, slide_id, collection)
    accounts, audit = _open(settings)
    try:
        store = LabelStore(accounts.db)
        labels = store.get(slide_id)
        if changes:
            labels = store.set(
                slide_id, block=new_block, stain=new_stain, scan_date=new_date, now=time.time()
            )
            audit.append(
                INSTANCES_ACCESSED,
                action="U",
                user=ADMIN,
                role="admin",
                obj=slide_id,
                detail={"change": "labelled", **changes},
            )
    finally:
        audit.close()
    return labels


def cmd_slides(args: argparse.Namespace) -> int:
    if args.slides_command == "label":
        labels = label_slide(
            args.settings,
            args.slide_id,
            case=args.case,
            block=args.block,
            stain=args.stain,
            scan_date=args.scan_date,
        )
        shown = {"case": args.case, **labels.as_json()} if args.case else labels.as_json()
        print(f"{args.slide_id}: " + ", ".join(f"{k} {v or '-'}" for k, v in shown.items()))
        return 0
    for slide_id in args.slide_ids:
        assign_collection(args.settings, slide_id, args.collection)
    print(f"{len(args.slide_ids)} slide(s) assigned to collection {args.collection}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    home = args.settings.home
    if args.audit_command == "signing-key":
        public = create_signing_key(args.path)
        print(f"signing key written to {args.path} (0600); public key: {public}")
        return 0
    if args.audit_command == "init-db":
        return _init_db(args.admin_database, args.role)
    key = KeyRing(home).service_key("audit")
    if args.settings.audit_database is not None:
        return _audit_streams(args, key, args.settings.audit_database)
    path = home / "audit" / "audit.jsonl"
    if args.audit_command == "checkpoint":
        checkpoint = make_checkpoint(path, key, args.signing_key)
        append_checkpoint(args.out, checkpoint)
        print(f"checkpoint of {checkpoint['records']} records appended to {args.out}")
        return 0
    if args.audit_command == "verify":
        if (args.checkpoints is None) != (args.public_key is None):
            raise TileserverError("--checkpoints and --public-key go together")
        if args.checkpoints is None:
            result = verify(path, key)
        else:
            result = verify_with_checkpoints(path, key, args.checkpoints, args.public_key)
        if not result.ok:
            print(
                f"tileserver: audit trail BROKEN at record {result.first_bad}: {result.reason}",
                file=sys.stderr,
            )
            return 2
        print(f"audit trail intact: {result.reason}")
        return 0
    out = sys.stdout if args.out == "-" else open(args.out, "w")  # noqa: SIM115
    try:
        count = export(path, key, out)
    finally:
        if out is not sys.stdout:
            out.close()
    AuditLog(path, key).append(
        AUDIT_LOG_USED, action="R", user=ADMIN, role="admin", detail={"exported": count}
    )
    if args.out != "-":
        print(f"exported {count} records to {args.out}")
    return 0


def _init_db(admin_url: str, role: str) -> int:
    check_command_line_url(admin_url, "--admin-database")
    grants, url = init_database(admin_url, role)
    print("audit tables audit_streams and audit_records ready; UPDATE, DELETE and TRUNCATE")
    print("are refused by triggers, even to their owner. Grants made:")
    for statement in grants:
        print(f"  {statement};")
    if url is None:
        print(f"role {role} exists: its password is unchanged")
        return 0
    print(f"role {role} created; servers and audit commands connect as it (shown once; put it")
    print("in TILESERVER_AUDIT_DATABASE, or the password in PGPASSFILE):")
    print(url)
    return 0


def _audit_streams(args: argparse.Namespace, key: bytes, url: str) -> int:
    """``audit verify|export|checkpoint`` over every stream in PostgreSQL."""
    db = connect(url, max_size=1)
    try:
        if args.audit_command == "checkpoint":
            checkpoint = streams.make_checkpoint(db, key, args.signing_key)
            append_checkpoint(args.out, checkpoint)
            heads = checkpoint["streams"]
            total = sum(head["records"] for head in heads)
            print(f"checkpoint of {len(heads)} stream(s), {total} records appended to {args.out}")
            return 0
        if args.audit_command == "verify":
            if (args.checkpoints is None) != (args.public_key is None):
                raise TileserverError("--checkpoints and --public-key go together")
            problems: list[str] = []
            signed = ""
            if args.checkpoints is None:
                reports = streams.verify_streams(db, key)
            else:
                reports, problems, count = streams.verify_with_checkpoints(
                    db, key, args.checkpoints, args.public_key
                )
                signed = f", {count} checkpoint(s)"
            for report in reports:
                result = report.result
                if result.ok:
                    print(f"stream {report.stream}: intact, {result.records} records")
                else:
                    where = "" if result.first_bad is None else f" at seq {result.first_bad}"
                    print(
                        f"tileserver: stream {report.stream} BROKEN{where}: {result.reason}",
                        file=sys.stderr,
                    )
            for problem in problems:
                print(f"tileserver: {problem}", file=sys.stderr)
            broken = sum(not report.result.ok for report in reports) + len(problems)
            if broken:
                return 2
            print(f"audit trail intact: {len(reports)} stream(s){signed}")
            return 0
        out = sys.stdout if args.out == "-" else open(args.out, "w")  # noqa: SIM115
        try:
            count = streams.export_streams(db, key, out)
        finally:
            if out is not sys.stdout:
                out.close()
    finally:
        db.close()
    audit = open_audit_log(args.settings.home, key, url)
    try:
        audit.append(
            AUDIT_LOG_USED, action="R", user=ADMIN, role="admin", detail={"exported": count}
        )
    finally:
        audit.close()
    if args.out != "-":
        print(f"exported {count} records to {args.out}")
    return 0


def add_audit_database_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--audit-database",
        metavar="URL",
        help="the audit trail in PostgreSQL, one stream per process: postgresql://ROLE@HOST:"
        "PORT/DB with the append-only role `audit init-db` made (password from PGPASSFILE or "
        "PGPASSWORD, never here; default: TILESERVER_AUDIT_DATABASE, else the file in "
        "TILESERVER_HOME/audit)",
    )


def add_database_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database",
        metavar="URL",
        help="server state in PostgreSQL: postgresql://USER@HOST:PORT/DB[?sslmode=verify-full]"
        " (password from PGPASSFILE or PGPASSWORD, never here; default: TILESERVER_DATABASE,"
        " else SQLite in TILESERVER_HOME)",
    )


def add_commands(sub: Any) -> None:
    url = {"default": "https://127.0.0.1:8443", "help": "the server's address, for printed links"}
    users = sub.add_parser("users", help="people: bootstrap, add, disable, reset, grant")
    us = users.add_subparsers(dest="users_command", required=True)
    boot = us.add_parser("bootstrap", help="one-time setup link for the first administrator")
    boot.add_argument("--url", **url)
    add = us.add_parser("add", help="add a user; prints a one-time enrolment link")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, default="pathologist")
    add.add_argument("--url", **url)
    for name in ("disable", "enable"):
        us.add_parser(name, help=f"{name} a user").add_argument("name")
    reset = us.add_parser("reset", help="forget password and TOTP; prints a new enrolment link")
    reset.add_argument("name")
    reset.add_argument("--url", **url)
    grant = us.add_parser("grant", help="let a user see a collection (case)")
    grant.add_argument("name")
    grant.add_argument("collection")
    grant.add_argument("--labels", action="store_true", help="also label and macro images")
    grant.add_argument("--revoke", action="store_true", help="take the grant away")
    link = us.add_parser("login-link", help="one-time login link (servers on loopback only)")
    link.add_argument("name")
    link.add_argument("--url", **url)
    us.add_parser("list", help="users, roles and states")
    users.set_defaults(func=cmd_users)

    tokens = sub.add_parser("tokens", help="machine (LIS) tokens with scopes")
    ts = tokens.add_subparsers(dest="tokens_command", required=True)
    create = ts.add_parser("create", help="create a token; printed once, as the last line")
    create.add_argument("name")
    create.add_argument("--scope", required=True, help=f"comma-separated: {','.join(SCOPES)}")
    create.add_argument("--collection", action="append", help="limit to a collection (repeat)")
    create.add_argument("--expires-days", type=float, default=None)
    create.add_argument(
        "--certificate-only",
        action="store_true",
        help="no bearer secret: only a client certificate with this common name (serve "
        "--client-ca) acts as this token",
    )
    ts.add_parser("revoke", help="revoke a token").add_argument("name")
    ts.add_parser("list", help="tokens (never their values)")
    tokens.set_defaults(func=cmd_tokens)

    slides = sub.add_parser(
        "slides", help="put slides into collections (cases); label them (block, stain, date)"
    )
    ss = slides.add_subparsers(dest="slides_command", required=True)
    assign = ss.add_parser("assign", help="assign slide IDs to a collection")
    assign.add_argument("collection")
    assign.add_argument("slide_ids", nargs="+")
    label = ss.add_parser(
        "label",
        help="set a slide's case, block, stain and scan date (an empty value clears a label)",
    )
    label.add_argument("slide_id")
    label.add_argument("--case", help="the case (collection) the slide belongs to")
    label.add_argument("--block", help="the tissue block, e.g. A2")
    label.add_argument("--stain", help="the stain, e.g. H&E or Ki-67")
    label.add_argument("--scan-date", metavar="YYYY-MM-DD", help="the day the slide was scanned")
    slides.set_defaults(func=cmd_slides)
    for commands in (us, ts, ss):  # every command that reads or writes server state
        for command in commands.choices.values():
            add_database_option(command)
            add_audit_database_option(command)

    urls = sub.add_parser("urls", help="keys that sign shareable tile URLs")
    ul = urls.add_subparsers(dest="urls_command", required=True)
    ul.add_parser("list", help="key IDs; the newest signs")
    ul.add_parser("rotate", help="a new key signs from now on; older ones still verify")
    ul.add_parser("retire", help="destroy a key: URLs it signed are refused").add_argument("kid")
    for command in ul.choices.values():
        add_database_option(command)  # signing keys live in the state database when shared
        add_audit_database_option(command)
    urls.set_defaults(func=cmd_urls)

    audit = sub.add_parser("audit", help="verify or export the tamper-evident audit trail")
    au = audit.add_subparsers(dest="audit_command", required=True)
    from tileserver.alert_commands import add_watch_command  # it imports this module

    add_watch_command(au)
    check = au.add_parser("verify", help="check the hash chain; names the first bad record")
    check.add_argument("--checkpoints", type=Path, help="signed checkpoints (detect truncation)")
    check.add_argument("--public-key", type=Path, help="the checkpoint signing key's public half")
    key = au.add_parser("signing-key", help="create an Ed25519 checkpoint signing key (0600)")
    key.add_argument("path", type=Path, help="keep it where only the checkpoint account reads")
    point = au.add_parser(
        "checkpoint", help="sign the chain's head and append it to a file kept off this host"
    )
    point.add_argument("--signing-key", type=Path, required=True)
    point.add_argument("--out", type=Path, required=True)
    exp = au.add_parser(
        "export", help="write the records as JSON lines for a SIEM (every stream, by time)"
    )
    exp.add_argument("--out", default="-")
    for command in (check, point, exp):
        add_audit_database_option(command)
    init = au.add_parser(
        "init-db",
        help="once, as the tables' owner: create the PostgreSQL audit tables, their "
        "append-only triggers and the INSERT/SELECT-only role servers write through",
    )
    init.add_argument(
        "--admin-database",
        metavar="URL",
        required=True,
        help="postgresql://OWNER@HOST:PORT/DB (password from PGPASSFILE or PGPASSWORD)",
    )
    init.add_argument(
        "--role", default=WRITER_ROLE, help=f"the writer role (default {WRITER_ROLE})"
    )
    audit.set_defaults(func=cmd_audit)
