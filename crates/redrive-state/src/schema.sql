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

CREATE UNIQUE INDEX IF NOT EXISTS items_top_key   ON items(key)         WHERE parent IS NULL;
CREATE UNIQUE INDEX IF NOT EXISTS items_child_key ON items(parent, key) WHERE parent IS NOT NULL;
CREATE INDEX        IF NOT EXISTS items_status    ON items(status, id);

CREATE VIEW IF NOT EXISTS failed AS
    SELECT id, parent, key, step, attempts, error, updated_at
    FROM items WHERE status = 'failed';
