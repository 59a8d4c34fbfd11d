-- The store's schema. See docs/design.md and ../shared/design/protocol.md for the protocol
-- these tables serve. Indexes are only those the queries need: each one costs the indexer.

-- The stream index: the version of each stream's last accepted event. Ingest compares and sets
-- it. A row at version -1 is a placeholder that an in-flight attempt holds locked; it never
-- survives a commit.
CREATE TABLE streams (
    stream_id   TEXT PRIMARY KEY,
    version     BIGINT NOT NULL CHECK (version >= -1)
);

-- The append ledger: one row per append id and its final outcome. Claiming the append id here
-- (unique) is what makes retries and redeliveries idempotent (I4).
CREATE TABLE append_ledger (
    append_id       UUID PRIMARY KEY,
    attempt_id      UUID NOT NULL,
    stream_id       TEXT NOT NULL,
    fingerprint     UUID NOT NULL,
    event_count     INT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'accepted', 'rejected')),
    first_version   BIGINT,
    last_version    BIGINT,
    reject_code     TEXT,
    actual_version  BIGINT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Pruning walks the ledger by age.
CREATE INDEX append_ledger_created_at ON append_ledger (created_at);

-- Event ids are unique in the store; ingest claims them here so a duplicate is rejected at the
-- door instead of failing in the indexer after it was acknowledged.
CREATE TABLE event_claims (
    event_id    UUID PRIMARY KEY,
    append_id   UUID NOT NULL
);

-- The authoritative events. global_position is gap-free and increases in commit order (I5).
-- No unique index on event_id: the claims already guarantee it and it would cost COPY 30-45%.
CREATE TABLE events (
    global_position BIGINT PRIMARY KEY,
    event_id        UUID NOT NULL,
    stream_id       TEXT NOT NULL,
    category        TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    data            JSONB NOT NULL,
    metadata        JSONB,
    version         BIGINT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    kafka_partition INT NOT NULL,
    kafka_offset    BIGINT NOT NULL,
    CONSTRAINT events_stream_version UNIQUE (stream_id, version)
);
-- Category reads (`Order-*`) and category projections page by position within a category.
CREATE INDEX events_category_position ON events (category, global_position);

-- The single counter row that hands out global positions; locking it serialises committers so
-- positions become visible in commit order.
CREATE TABLE global_position_counter (
    singleton     BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    last_position BIGINT NOT NULL
);
INSERT INTO global_position_counter (singleton, last_position) VALUES (true, 0);

-- Where the indexer is in each ingest-log partition (next offset to index). Written in the same
-- transaction as the rows, as a compare-and-set on the batch's start offset.
CREATE TABLE indexer_offsets (
    topic        TEXT NOT NULL,
    partition_id INT NOT NULL,
    next_offset  BIGINT NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition_id)
);

-- How far the elected publisher has published to the canonical topic.
CREATE TABLE published_through (
    singleton       BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    global_position BIGINT NOT NULL
);
INSERT INTO published_through (singleton, global_position) VALUES (true, 0);

-- Snapshots of stream state, for users who fold long streams.
CREATE TABLE snapshots (
    stream_id   TEXT NOT NULL,
    version     BIGINT NOT NULL,
    state       JSONB NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (stream_id, version)
);

-- Checkpoints of subscriptions and projections: the last global position applied.
CREATE TABLE subscription_checkpoints (
    subscription    TEXT PRIMARY KEY,
    global_position BIGINT NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Records nobody could process: undecodable ingest-log records, poison events of projections.
CREATE TABLE dead_letters (
    id              BIGSERIAL PRIMARY KEY,
    source          TEXT NOT NULL,
    global_position BIGINT,
    event_id        UUID,
    kafka_topic     TEXT,
    kafka_partition INT,
    kafka_offset    BIGINT,
    payload         BYTEA,
    error           TEXT NOT NULL,
    attempts        INT NOT NULL DEFAULT 1,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    replayed_at     TIMESTAMPTZ
);
CREATE INDEX dead_letters_source ON dead_letters (source, id);
