-- Records an operator took out of the indexing path. When a record is refused by Postgres for a
-- data reason (it got past validation), its ingest-log partition halts at it: nothing after it
-- is indexed and nothing is dropped. `esk indexer quarantine --partition P --offset O` asks for
-- that record to be set aside: it inserts a row here; the indexer then moves the record's bytes
-- into `payload`, in the same transaction that advances the partition past it, and the
-- partition continues. A quarantined event is not in `events`: its stream has a gap at its
-- version, which the row explains.
CREATE TABLE indexer_quarantine (
    topic           TEXT NOT NULL,
    partition_id    INT NOT NULL,
    kafka_offset    BIGINT NOT NULL,
    reason          TEXT NOT NULL,
    requested_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    payload         BYTEA,
    quarantined_at  TIMESTAMPTZ,
    PRIMARY KEY (topic, partition_id, kafka_offset)
);
