"""The auth database's schema: versioned migrations, the same on SQLite and PostgreSQL."""

from __future__ import annotations

from tileserver.security.database import Migration

# Versioned (tileserver.security.database.migrate), the same on SQLite and PostgreSQL: types
# as SQLite names them, "user" quoted (a keyword in PostgreSQL). Version 1 is the schema from
# before versioning, so it must stay idempotent: it adopts auth.db files made back then.
MIGRATIONS = [
    Migration(
        1,
        """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, role TEXT NOT NULL, pw_hash TEXT, totp_sealed BLOB,
    totp_last_step INTEGER, disabled INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL DEFAULT 0,
    created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS one_time (
    hash TEXT PRIMARY KEY, purpose TEXT NOT NULL, "user" TEXT, role TEXT, expires REAL NOT NULL,
    used INTEGER NOT NULL DEFAULT 0, totp_sealed BLOB);
CREATE TABLE IF NOT EXISTS sessions (
    hash TEXT PRIMARY KEY, "user" TEXT NOT NULL, created REAL NOT NULL, last_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, scopes TEXT NOT NULL,
    collections TEXT, expires REAL, revoked INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS slides (slide_id TEXT PRIMARY KEY, collection TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS login_throttle (
    tag TEXT PRIMARY KEY, known INTEGER NOT NULL, failures INTEGER NOT NULL,
    guesses INTEGER NOT NULL, next_attempt REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS grants (
    "user" TEXT NOT NULL, collection TEXT NOT NULL, labels INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY ("user", collection));
CREATE TABLE IF NOT EXISTS generation (id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL);
INSERT INTO generation (id, n) VALUES (1, 0) ON CONFLICT (id) DO NOTHING
""",
    ),
    # Principals ("token:NAME", "user:NAME") a detector alert suspended (security/alerts.py),
    # refused on every request until an administrator clears them.
    Migration(
        2,
        """
CREATE TABLE IF NOT EXISTS suspensions (
    principal TEXT PRIMARY KEY, reason TEXT NOT NULL, alert_id TEXT NOT NULL,
    created REAL NOT NULL)
""",
    ),
    # A keyed digest of the key that seals TOTP secrets and tags user names, written by the
    # first server: one with another key refuses to start (Accounts._check_key).
    Migration(
        3,
        """
CREATE TABLE IF NOT EXISTS key_checks (purpose TEXT PRIMARY KEY, digest TEXT NOT NULL)
""",
    ),
    # Keys that sign shareable URLs, for servers sharing PostgreSQL (signed_urls.SharedUrlKeys),
    # sealed under a key derived from the TOTP service key every such server holds.
    Migration(
        4,
        """
CREATE TABLE IF NOT EXISTS url_keys (kid INTEGER PRIMARY KEY, sealed BLOB NOT NULL)
""",
    ),
    # Annotations (security/annotation_store.py): one row per annotation naming its newest
    # version, and every version ever written, append-only (an edit adds one, a delete adds a
    # tombstone). Bodies are sealed with a key derived from the slide's data key.
    Migration(
        5,
        """
CREATE TABLE IF NOT EXISTS annotations (
    id TEXT PRIMARY KEY, slide_id TEXT NOT NULL, author TEXT NOT NULL,
    version INTEGER NOT NULL, shared INTEGER NOT NULL, deleted INTEGER NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL);
CREATE INDEX IF NOT EXISTS annotations_slide ON annotations (slide_id, deleted);
CREATE TABLE IF NOT EXISTS annotation_versions (
    annotation_id TEXT NOT NULL, version INTEGER NOT NULL, slide_id TEXT NOT NULL,
    author TEXT NOT NULL, shared INTEGER NOT NULL, deleted INTEGER NOT NULL,
    created REAL NOT NULL, sealed BLOB,
    PRIMARY KEY (annotation_id, version))
""",
    ),
    # What tells a case's slides apart (security/slide_labels.py): block, stain and scan date
    # an operator set (`tileserver slides label`); the case is the slide's collection. Text as
    # given, the scan date as YYYY-MM-DD; a label never set is NULL.
    Migration(
        6,
        """
CREATE TABLE IF NOT EXISTS slide_labels (
    slide_id TEXT PRIMARY KEY, block TEXT, stain TEXT, scan_date TEXT, updated REAL NOT NULL)
""",
    ),
]
