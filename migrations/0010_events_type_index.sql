-- Type reads (`GET /types/{event_type}/events`) and `types=` filters of `$all` reads and
-- subscriptions page by position within one or more event types. Without this index they scan
-- `events` by position and filter, which is fine for common types and slow for rare ones.
-- Like the category index (0001), every indexed row pays for it: the indexer's COPY maintains
-- one more b-tree. To make it opt-in, delete this file's statement before the first start (the
-- filters still work, by scanning) or drop the index later:
-- `DROP INDEX events_type_position;`.
CREATE INDEX IF NOT EXISTS events_type_position ON events (event_type, global_position);
