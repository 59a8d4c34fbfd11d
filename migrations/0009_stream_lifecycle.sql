-- Stream lifecycle (docs/design.md, "Stream lifecycle"): metadata, deletes, retention.
--
-- The lifecycle flags live on the stream index row, which every append locks (stream_index.rs):
-- ingest reads them under that lock and sets them in the attempt that accepts a delete, so no
-- append can pass a tombstone. `deleted_through`: versions up to it were soft-deleted (hidden);
-- `tombstoned`: hard-deleted, nothing is appended or read again.
ALTER TABLE streams
    ADD COLUMN deleted_through BIGINT,
    ADD COLUMN tombstoned BOOLEAN NOT NULL DEFAULT false;

-- The current metadata of each stream that has any, written by the ingest attempt that
-- accepted the `$metadata` event (so a GET after an acknowledged PUT sees it).
-- `metadata_version` is that event's version in `$$<stream>`.
CREATE TABLE stream_metadata (
    stream_id        TEXT PRIMARY KEY,
    metadata_version BIGINT NOT NULL CHECK (metadata_version >= 0),
    max_age_s        BIGINT CHECK (max_age_s >= 1),
    max_count        BIGINT CHECK (max_count >= 1),
    truncate_before  BIGINT CHECK (truncate_before >= 0),
    custom           JSON,
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The visibility rules of the streams that have any (most have none and are not listed):
-- events below `min_version` (truncate-before, max-count, a soft delete) or older than
-- `max_age_s` are hidden, and every event of a tombstoned stream.
CREATE VIEW stream_visibility AS
SELECT s.stream_id,
       s.tombstoned,
       coalesce(greatest(s.deleted_through + 1, m.truncate_before,
                         s.version - m.max_count + 1), 0) AS min_version,
       m.max_age_s
FROM streams s
LEFT JOIN stream_metadata m ON m.stream_id = s.stream_id
WHERE s.tombstoned OR s.deleted_through IS NOT NULL OR m.stream_id IS NOT NULL;

-- The one definition of "hidden": reads filter with it at query time, the scavenger deletes
-- what it selects.
CREATE FUNCTION event_hidden(p_stream TEXT, p_version BIGINT, p_created TIMESTAMPTZ)
RETURNS BOOLEAN LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1 FROM stream_visibility v
        WHERE v.stream_id = p_stream
          AND (v.tombstoned OR p_version < v.min_version
               OR p_created < now() - make_interval(secs => v.max_age_s::double precision)))
$$;

-- What the scavenger may delete: hidden events already on the canonical topic, except each
-- stream's last event (kept, as KurrentDB does, so `/wait` and a stream's version stay
-- answerable from `events`).
CREATE VIEW scavengeable_events AS
SELECT e.global_position
FROM stream_visibility v
JOIN events e ON e.stream_id = v.stream_id
WHERE event_hidden(e.stream_id, e.version, e.created_at)
  AND e.global_position <= (SELECT global_position FROM published_through)
  AND e.version < (SELECT max(l.version) FROM events l WHERE l.stream_id = v.stream_id);

-- One bounded scavenging batch, its own short transaction (the caller's statement): rows
-- another scavenger holds are skipped, the position counter is never touched, so indexing goes
-- on. SECURITY DEFINER: the indexer may run it without any DELETE grant on `events` (`esk
-- setup` grants EXECUTE to the indexer role only).
CREATE FUNCTION scavenge_events(p_limit INT) RETURNS BIGINT
LANGUAGE sql SECURITY DEFINER SET search_path = public AS $$
    WITH doomed AS (
        SELECT e.global_position FROM events e
        WHERE e.global_position IN (SELECT global_position FROM scavengeable_events LIMIT p_limit)
        FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM events WHERE global_position IN (SELECT global_position FROM doomed)
        RETURNING 1
    )
    SELECT count(*) FROM gone
$$;
REVOKE ALL ON FUNCTION scavenge_events(INT) FROM PUBLIC;

-- How many events the scavenger may still delete (for `esk scavenge`'s progress).
CREATE FUNCTION scavengeable_event_count() RETURNS BIGINT
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
    SELECT count(*) FROM scavengeable_events
$$;
REVOKE ALL ON FUNCTION scavengeable_event_count() FROM PUBLIC;
