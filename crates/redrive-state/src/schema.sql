-- redrive state, schema version 1. Documented in README.md ("The state database").
CREATE TABLE IF NOT EXISTS job (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    name            TEXT    NOT NULL,
    fingerprint     TEXT    NOT NULL,
    source_complete INTEGER NOT NULL DEFAULT 0,
    schema_version  INTEGER NOT NULL,
    created_at      TEXT    NOT NULL
);

CREATE TABLE IF NOT EXISTS items (
    id          INTEGER PRIMARY KEY,
    parent      INTEGER REFERENCES items(id),
    key         TEXT    NOT NULL,
    fields      TEXT    NOT NULL,                 -- JSON object of the item's fields
    expanded    INTEGER NOT NULL DEFAULT 0,       -- a parent whose children are all recorded
    step_index  INTEGER NOT NULL DEFAULT 0,       -- first step not yet finished
    step        TEXT,                             -- its name
    status      TEXT    NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'running', 'done', 'skipped', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    error       TEXT,                             -- last error (failed) or reason (skipped)
    bytes       INTEGER NOT NULL DEFAULT 0,
    created_at  TEXT    NOT NULL,
    started_at  TEXT,
    updated_at  TEXT    NOT NULL,
    finished_at TEXT
);

-- Files that steps produced (`output = …`), one per item and step.
CREATE TABLE IF NOT EXISTS outputs (
    item        INTEGER NOT NULL REFERENCES items(id),
    step_index  INTEGER NOT NULL,
    path        TEXT    NOT NULL,
    bytes       INTEGER NOT NULL,
    recorded_at TEXT    NOT NULL,
    PRIMARY KEY (item, step_index)
);

-- The one object a step writes for each top-level item (its rendered `copy.to`), claimed as
-- the item loads: a second key that renders the same target is refused.
CREATE TABLE IF NOT EXISTS targets (
    step_index  INTEGER NOT NULL,
    target      TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    PRIMARY KEY (step_index, target)
) WITHOUT ROWID;

-- How long each step took, summed over the items it ended (done, skipped or failed), per
-- duration bucket (< 10 ms, < 100 ms, < 1 s, < 10 s, < 1 min, < 10 min, longer: 0 to 6), as
-- runs measured them; for `redrive report`.
CREATE TABLE IF NOT EXISTS step_times (
    step_index  INTEGER NOT NULL,
    step        TEXT    NOT NULL,
    bucket      INTEGER NOT NULL,
    ended       INTEGER NOT NULL,
    seconds     REAL    NOT NULL,
    PRIMARY KEY (step_index, bucket)
) WITHOUT ROWID;

CREATE UNIQUE INDEX IF NOT EXISTS items_top_key   ON items(key)         WHERE parent IS NULL;
CREATE UNIQUE INDEX IF NOT EXISTS items_child_key ON items(parent, key) WHERE parent IS NOT NULL;
CREATE INDEX        IF NOT EXISTS items_status    ON items(status, id);
-- Runnable items in id order, read a page at a time (one index walk per status, no sort):
CREATE INDEX IF NOT EXISTS items_top_status      ON items(status, id)         WHERE parent IS NULL;
CREATE INDEX IF NOT EXISTS items_top_no_input    ON items(id)                 WHERE parent IS NULL AND status = 'skipped' AND error = 'no input';
CREATE INDEX IF NOT EXISTS items_child_status    ON items(parent, status, id) WHERE parent IS NOT NULL;
CREATE INDEX IF NOT EXISTS items_child_no_input  ON items(parent, id)         WHERE parent IS NOT NULL AND status = 'skipped' AND error = 'no input';

-- Items that failed themselves (an expanded parent fails because of its children, listed here).
CREATE VIEW IF NOT EXISTS failed AS
    SELECT id, parent, key, step, attempts, error, updated_at
    FROM items WHERE status = 'failed' AND NOT (parent IS NULL AND expanded = 1);

-- Top-level items (work items) with their children (files) counted by status.
CREATE VIEW IF NOT EXISTS workitems AS
    SELECT p.id, p.key, p.fields, p.status, p.error, p.attempts,
           count(c.id)                         AS files_total,
           coalesce(sum(c.status = 'done'), 0)    AS files_done,
           coalesce(sum(c.status = 'skipped'), 0) AS files_skipped,
           coalesce(sum(c.status = 'failed'), 0)  AS files_failed,
           coalesce(sum(c.bytes), 0)              AS bytes,
           p.started_at, p.finished_at
    FROM items p LEFT JOIN items c ON c.parent = p.id
    WHERE p.parent IS NULL
    GROUP BY p.id;

-- Children (files) with their parent's key.
CREATE VIEW IF NOT EXISTS files AS
    SELECT c.id, p.key AS workitem, c.key, c.fields, c.step, c.status, c.error, c.attempts,
           c.bytes, c.started_at, c.finished_at
    FROM items c JOIN items p ON p.id = c.parent;

-- Whether a run has the state open: `running` is set (and checkpointed into this file) when a
-- run begins and cleared when it closes the state; `commits` is set to 1 just after the begin,
-- in the log only, before the run's first side effect. `running` set and `commits` 0 in this
-- file, with no write-ahead log beside it: a run died and its log, which held what it
-- recorded, was removed (a log that SQLite folded into the file brings `commits = 1` here).
CREATE TABLE IF NOT EXISTS run_open (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    running INTEGER NOT NULL,
    commits INTEGER NOT NULL DEFAULT 0
);

-- The source's revision when its load last completed (a local file's length and modification
-- time): a rerun that finds another one reads the source again for new rows.
CREATE TABLE IF NOT EXISTS source_revision (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    revision TEXT NOT NULL
);
