-- The usage store's first schema, for SQLite and PostgreSQL alike.
-- Times are epoch milliseconds (BIGINT), so range queries are the same in both databases.

-- The next offset to read per partition of the topics read, written in the same transaction
-- as the rows made from the records before it: the store's exactly-once position.
CREATE TABLE consumer_offset (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (topic, partition)
);

-- Evidence: every window record received, append-only, with the JSON as received.
-- seq orders records as ingested; ingested_at (wall clock) serves as-of queries.
CREATE TABLE window_revision (
    record_id TEXT PRIMARY KEY,
    seq BIGINT NOT NULL UNIQUE,
    subject_type TEXT NOT NULL,
    subject TEXT NOT NULL,
    org_id TEXT,
    window_size TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    window_end BIGINT NOT NULL,
    revision INTEGER NOT NULL,
    base TEXT NOT NULL,
    calls BIGINT NOT NULL,
    records BIGINT NOT NULL,
    late_events BIGINT NOT NULL,
    emitted_at BIGINT NOT NULL,
    payload TEXT NOT NULL,
    payload_sha256 TEXT NOT NULL,
    source_topic TEXT NOT NULL,
    source_partition INTEGER NOT NULL,
    source_offset BIGINT NOT NULL,
    ingested_at BIGINT NOT NULL
);
CREATE INDEX window_revision_window
    ON window_revision (subject_type, window_size, window_start, subject, revision);
CREATE INDEX window_revision_ingested ON window_revision (ingested_at);

-- The endpoints and recipients breakdowns of each evidence record (dimension: endpoint or
-- recipient), so that as-of queries rebuild any past state in SQL.
CREATE TABLE window_revision_cell (
    record_id TEXT NOT NULL,
    dimension TEXT NOT NULL,
    name TEXT NOT NULL,
    calls BIGINT NOT NULL,
    records BIGINT NOT NULL,
    PRIMARY KEY (record_id, dimension, name)
);

-- Current totals per subject and window: the highest revision received.
-- record_id: that record; complete_record_id: the last complete record, whose breakdowns an
-- expired record's add to.
CREATE TABLE usage_window (
    subject_type TEXT NOT NULL,
    subject TEXT NOT NULL,
    window_size TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    window_end BIGINT NOT NULL,
    org_id TEXT,
    revision INTEGER NOT NULL,
    base TEXT NOT NULL,
    calls BIGINT NOT NULL,
    records BIGINT NOT NULL,
    late_events BIGINT NOT NULL,
    record_id TEXT NOT NULL,
    complete_record_id TEXT,
    emitted_at BIGINT NOT NULL,
    ingested_at BIGINT NOT NULL,
    PRIMARY KEY (subject_type, subject, window_size, window_start)
);
CREATE INDEX usage_window_range ON usage_window (subject_type, window_size, window_start);
CREATE INDEX usage_window_org ON usage_window (org_id, subject_type, window_size, window_start);

-- Breakdowns of the current totals. part 'complete': the last complete record's; part
-- 'expired': what the latest expired record counted since compaction. A window's whole
-- breakdown is the sum of its parts.
CREATE TABLE usage_window_endpoint (
    subject_type TEXT NOT NULL,
    subject TEXT NOT NULL,
    window_size TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    part TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    calls BIGINT NOT NULL,
    records BIGINT NOT NULL,
    PRIMARY KEY (subject_type, subject, window_size, window_start, part, endpoint)
);

CREATE TABLE usage_window_recipient (
    subject_type TEXT NOT NULL,
    subject TEXT NOT NULL,
    window_size TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    part TEXT NOT NULL,
    recipient TEXT NOT NULL,
    calls BIGINT NOT NULL,
    records BIGINT NOT NULL,
    PRIMARY KEY (subject_type, subject, window_size, window_start, part, recipient)
);

CREATE TABLE usage_window_cap (
    subject_type TEXT NOT NULL,
    subject TEXT NOT NULL,
    window_size TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    cap TEXT NOT NULL,
    metric TEXT NOT NULL,
    limit_value BIGINT NOT NULL,
    used BIGINT NOT NULL,
    utilization DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (subject_type, subject, window_size, window_start, cap)
);

-- Every alert once (its id is deterministic), with the JSON as received.
CREATE TABLE alert (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    severity TEXT NOT NULL,
    subject_type TEXT NOT NULL,
    subject TEXT NOT NULL,
    org_id TEXT,
    cap TEXT,
    metric TEXT NOT NULL,
    window_size TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    window_end BIGINT NOT NULL,
    limit_value BIGINT,
    used BIGINT NOT NULL,
    threshold DOUBLE PRECISION,
    utilization DOUBLE PRECISION,
    crossed_at BIGINT NOT NULL,
    emitted_at BIGINT NOT NULL,
    late INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    app_id TEXT,
    recipient TEXT,
    rule TEXT,
    payload TEXT NOT NULL,
    payload_sha256 TEXT NOT NULL,
    source_topic TEXT NOT NULL,
    source_partition INTEGER NOT NULL,
    source_offset BIGINT NOT NULL,
    ingested_at BIGINT NOT NULL
);
CREATE INDEX alert_crossed ON alert (crossed_at, id);
CREATE INDEX alert_subject ON alert (subject_type, subject, crossed_at);
CREATE INDEX alert_org ON alert (org_id, crossed_at);

-- The window sizes received (size_ms: NULL for calendar months), for the query planner.
CREATE TABLE stored_window_size (
    window_size TEXT PRIMARY KEY,
    size_ms BIGINT,
    first_ingested_at BIGINT NOT NULL
);

-- Records that are not valid window totals or alerts: kept, never applied.
CREATE TABLE rejected_record (
    source_topic TEXT NOT NULL,
    source_partition INTEGER NOT NULL,
    source_offset BIGINT NOT NULL,
    reason TEXT NOT NULL,
    payload TEXT,
    payload_sha256 TEXT,
    ingested_at BIGINT NOT NULL,
    PRIMARY KEY (source_topic, source_partition, source_offset)
);
