-- Event payloads are stored as the JSON text that was appended (`json`), not re-encoded
-- (`jsonb`). The store is an append-only log of facts: reads, replays and the canonical topic
-- return exactly the bytes that were indexed, whichever path produced them (the publisher sends
-- freshly committed batches from memory and anything else from this table; both must agree).
-- It is also cheaper: no jsonb encoding on COPY, no jsonb-to-text on every read. `->`/`->>`
-- still work; for containment queries or GIN indexes, cast (`data::jsonb`) or use a read model.
-- On an existing installation this rewrites the table once.
ALTER TABLE events
    ALTER COLUMN data TYPE json USING data::json,
    ALTER COLUMN metadata TYPE json USING metadata::json;
