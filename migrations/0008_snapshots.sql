-- Snapshots of stream state (`PUT/GET /streams/{id}/snapshot`, docs/snapshots.md): one row per
-- stream, the newest. Ingest upserts it in one statement that only moves `version` forward
-- (`... ON CONFLICT (stream_id) DO UPDATE ... WHERE snapshots.version < EXCLUDED.version`), so
-- concurrent writers cannot put an older state over a newer one. `data` is `json`, the text
-- that was sent, as for events' payloads (0004_events_json.sql): a snapshot reads back byte for
-- byte. The 0001 table (one row per version, `jsonb`) was never written by esk; the newest row
-- of each stream is kept anyway.
CREATE TABLE snapshots_latest (
    stream_id   TEXT PRIMARY KEY,
    version     BIGINT NOT NULL CHECK (version >= 0),
    data        JSON NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO snapshots_latest (stream_id, version, data, created_at)
SELECT DISTINCT ON (stream_id) stream_id, version, state::json, created_at
FROM snapshots
WHERE version >= 0
ORDER BY stream_id, version DESC;
DROP TABLE snapshots;
ALTER TABLE snapshots_latest RENAME TO snapshots;
ALTER TABLE snapshots RENAME CONSTRAINT snapshots_latest_pkey TO snapshots_pkey;
ALTER TABLE snapshots RENAME CONSTRAINT snapshots_latest_version_check TO snapshots_version_check;
