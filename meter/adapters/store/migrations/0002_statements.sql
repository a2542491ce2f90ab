-- Usage statements issued (`meter report`, `POST /v1/statements`): the canonical JSON as issued,
-- its id (SHA-256 of those bytes) and what finds its predecessor. A statement never changes;
-- a later one names the final statement it supersedes.
-- scope_sha256: the parameters that shape it (organisation, period, zone, rules);
-- content_sha256: its figures without the cut (as_of, status, supersedes).
CREATE TABLE statement (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    period_from BIGINT NOT NULL,
    period_to BIGINT NOT NULL,
    tz TEXT NOT NULL,
    scope_sha256 TEXT NOT NULL,
    content_sha256 TEXT NOT NULL,
    as_of BIGINT,
    status TEXT NOT NULL,
    supersedes TEXT,
    body TEXT NOT NULL,
    signature TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX statement_scope ON statement (scope_sha256, status, as_of);
CREATE INDEX statement_org ON statement (org_id, created_at);
CREATE INDEX statement_supersedes ON statement (supersedes);
