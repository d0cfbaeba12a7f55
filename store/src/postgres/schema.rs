//! The PostgreSQL schema as numbered migrations, applied at start-up under a session advisory
//! lock (replicas starting together apply each once; the others wait, then find it applied).

/// `(version, statements)`, in order. Never edit a released one: add the next.
pub(super) const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
CREATE TABLE conversations (
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    domain TEXT,
    email TEXT,
    bot_score INT NOT NULL DEFAULT 0,
    reasons TEXT NOT NULL DEFAULT '[]',
    manual TEXT,
    rep_id TEXT,
    team TEXT,
    slots TEXT NOT NULL DEFAULT '{}',
    intents TEXT NOT NULL DEFAULT '{}',
    turns BIGINT NOT NULL DEFAULT 0,
    closed BOOLEAN NOT NULL DEFAULT FALSE,
    taken_over_by TEXT,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX conversations_updated ON conversations (tenant, updated_ms);
CREATE INDEX conversations_created ON conversations (tenant, created_ms);
CREATE TABLE messages (
    tenant TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    turn BIGINT NOT NULL,
    author TEXT NOT NULL,
    text TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant, conversation_id, seq)
);
CREATE TABLE turn_intents (
    tenant TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    turn BIGINT NOT NULL,
    intents TEXT NOT NULL,
    PRIMARY KEY (tenant, conversation_id, turn)
);
CREATE TABLE events (
    cursor BIGSERIAL PRIMARY KEY,
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL,
    conversation_id TEXT,
    rep_id TEXT,
    team TEXT,
    payload TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);
CREATE INDEX events_tenant ON events (tenant, cursor);
CREATE INDEX events_conversation ON events (tenant, conversation_id, cursor);
CREATE INDEX events_at ON events (at_ms);
CREATE TABLE retention (
    id INT PRIMARY KEY CHECK (id = 1),
    pruned_through BIGINT NOT NULL
);
CREATE TABLE consumers (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    cursor BIGINT NOT NULL,
    PRIMARY KEY (tenant, name)
);
CREATE TABLE presence (
    tenant TEXT NOT NULL,
    rep_id TEXT NOT NULL,
    online BOOLEAN NOT NULL,
    capacity BIGINT NOT NULL,
    PRIMARY KEY (tenant, rep_id)
);
CREATE TABLE round_robin (
    tenant TEXT NOT NULL,
    team TEXT NOT NULL,
    rep_id TEXT NOT NULL,
    assigned BIGINT NOT NULL,
    PRIMARY KEY (tenant, team, rep_id)
);
CREATE TABLE meetings (
    id BIGSERIAL PRIMARY KEY,
    tenant TEXT NOT NULL,
    rep_id TEXT NOT NULL,
    start_s BIGINT NOT NULL,
    end_s BIGINT NOT NULL,
    conversation_id TEXT NOT NULL,
    email TEXT,
    created_ms BIGINT NOT NULL,
    UNIQUE (tenant, rep_id, start_s)
);
CREATE INDEX meetings_rep ON meetings (tenant, rep_id, start_s);
CREATE INDEX meetings_created ON meetings (tenant, created_ms);
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    role TEXT NOT NULL,
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    created_ms BIGINT NOT NULL,
    revoked_ms BIGINT
);
CREATE TABLE conversation_claims (
    tenant TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    external_ref TEXT,
    identity TEXT,
    created_ms BIGINT NOT NULL,
    revoked_ms BIGINT,
    PRIMARY KEY (tenant, conversation_id)
);
CREATE TABLE idempotency (
    tenant TEXT NOT NULL,
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    reply BYTEA NOT NULL,
    at_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant, scope, key)
);
"#,
    ),
    (
        2,
        r#"
CREATE TABLE webhook_endpoints (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    url TEXT NOT NULL,
    kinds TEXT NOT NULL,
    description TEXT NOT NULL,
    secret TEXT NOT NULL,
    previous_secret TEXT,
    previous_until_ms BIGINT,
    scan_cursor BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    disabled_ms BIGINT,
    disabled_reason TEXT
);
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints (tenant, created_ms);
CREATE TABLE webhook_deliveries (
    endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    cursor BIGINT NOT NULL,
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL,
    conversation_id TEXT,
    body TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INT NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT NOT NULL,
    last_status INT,
    last_response TEXT NOT NULL DEFAULT '',
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (endpoint_id, cursor)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_ms);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, status, cursor);
CREATE INDEX webhook_deliveries_conversation
    ON webhook_deliveries (endpoint_id, conversation_id, status, cursor);
"#,
    ),
    (
        3,
        r#"
CREATE SEQUENCE tenant_document_version;
CREATE TABLE tenant_documents (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    content BYTEA NOT NULL,
    version BIGINT NOT NULL UNIQUE,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant, name)
);
"#,
    ),
    (
        4,
        r#"
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until_ms BIGINT NOT NULL
);
"#,
    ),
];
