-- Projections: live positions per canonical-topic partition, the publisher's last offsets (for
-- the hand-over from a Postgres replay to Kafka), and the built-in read models.

-- Where a live projection stands in each partition of the canonical topic: the next offset to
-- read, and the highest global position applied from that partition (records at or below it are
-- repeats and are skipped). Rows exist only once the projection has handed over to Kafka.
CREATE TABLE projection_partitions (
    projection   TEXT NOT NULL,
    partition_id INT NOT NULL,
    next_offset  BIGINT NOT NULL,
    position     BIGINT NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, partition_id)
);

-- The publisher's last published record per partition, written with published_through in one
-- transaction: a replay that reached published_through can start each partition right after.
CREATE TABLE publisher_partitions (
    partition_id    INT PRIMARY KEY,
    last_offset     BIGINT NOT NULL,
    last_position   BIGINT NOT NULL
);

-- Built-in read model: event counts per category and event type.
CREATE TABLE projection_category_type_counts (
    projection  TEXT NOT NULL,
    category    TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    count       BIGINT NOT NULL,
    PRIMARY KEY (projection, category, event_type)
);

-- Built-in read model: one row per stream with its latest version and event type.
CREATE TABLE projection_stream_summary (
    projection      TEXT NOT NULL,
    stream_id       TEXT NOT NULL,
    version         BIGINT NOT NULL,
    last_event_type TEXT NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (projection, stream_id)
);

CREATE INDEX dead_letters_unreplayed ON dead_letters (source, id) WHERE replayed_at IS NULL;
