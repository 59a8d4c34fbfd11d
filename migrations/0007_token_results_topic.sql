-- A token's own results topic (`esk token create --results-topic`): ingest answers the Kafka
-- appends authenticated by that token on this topic instead of the shared `append-results`, so
-- Kafka ACLs can keep each producer's outcomes from the others. NULL: the shared topic.
ALTER TABLE api_tokens ADD COLUMN results_topic TEXT;
