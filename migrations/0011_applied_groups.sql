-- Multi-stream appends in the projector (docs/design.md, "Multi-stream appends: readers and
-- projections"). A group's events land on several partitions of the canonical topic; the first
-- of its records a live projection meets makes it apply the whole group (read from `events`
-- by positions first..=last), and records it here in the same transaction as its checkpoint, so
-- the group's records arriving later on other partitions are skipped: exactly once for SQL
-- projections. Rows are deleted once every partition of the projection has read past the group
-- (projector/src/group.rs), so the table holds only groups some partition has still to pass.
CREATE TABLE applied_groups (
    projection      TEXT NOT NULL,
    first_position  BIGINT NOT NULL,
    last_position   BIGINT NOT NULL,
    group_append_id UUID NOT NULL,
    applied_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, first_position)
);
