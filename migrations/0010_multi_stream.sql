-- Atomic multi-stream appends (docs/design.md, "Multi-stream appends"; ../shared design note
-- multi-stream.md, rules 1-7 and invariant I7).
--
-- One ledger row for the whole append M (rule 1). `stream_id`, `first_version`, `last_version`
-- and `actual_version` keep describing single-stream appends; for M, `parts` holds one object per
-- stream in request order:
--   accepted: {"stream_id", "first_version", "last_version"}
--   rejected: {"stream_id", "expected_version", "actual_version"} for the failing streams only
-- and `stream_id` is M's first stream (kept NOT NULL for the indexes and tools that read it).
ALTER TABLE append_ledger ADD COLUMN parts JSONB;

-- Every row of M names its group: the append id and the group's first and last global position
-- (M's events get contiguous positions in one indexer transaction). NULL on every other row, so a
-- single-stream COPY pays only the null bitmap. Readers extend a page that ends inside a group to
-- `group_last_position` (rule 7); the publisher copies the three into the canonical headers.
ALTER TABLE events
    ADD COLUMN group_append_id UUID,
    ADD COLUMN group_first_position BIGINT,
    ADD COLUMN group_last_position BIGINT,
    ADD CONSTRAINT events_group_complete CHECK (
        (group_append_id IS NULL) = (group_first_position IS NULL)
        AND (group_first_position IS NULL) = (group_last_position IS NULL)
        AND (group_first_position IS NULL
             OR group_first_position <= global_position AND global_position <= group_last_position)
    );
