-- Bearer tokens of the HTTP and Kafka APIs (`esk token create|list|revoke`). Only the SHA-256
-- of a token is kept: the token itself is printed once, at creation. Ingest looks a token up by
-- its hash and caches the answer for ESK_AUTH_CACHE_SECS, which bounds how long a revocation
-- takes to apply.
CREATE TABLE api_tokens (
    name        TEXT PRIMARY KEY,
    token_hash  BYTEA NOT NULL UNIQUE,
    -- `append:<pattern>`, `read:<pattern>`, `admin`; a pattern is `*`, `Category-*` or a stream id.
    scopes      TEXT[] NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ,
    revoked_at  TIMESTAMPTZ
);
