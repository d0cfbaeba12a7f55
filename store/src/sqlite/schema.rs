//! The SQLite schema, applied (idempotently) when a database is opened.

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS conversations (
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    domain TEXT,
    email TEXT,
    bot_score INTEGER NOT NULL DEFAULT 0,
    reasons TEXT NOT NULL DEFAULT '[]',
    manual TEXT,
    rep_id TEXT,
    team TEXT,
    slots TEXT NOT NULL DEFAULT '{}',
    intents TEXT NOT NULL DEFAULT '{}',
    turns INTEGER NOT NULL DEFAULT 0,
    closed INTEGER NOT NULL DEFAULT 0,
    taken_over_by TEXT,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX IF NOT EXISTS conversations_updated ON conversations (tenant, updated_ms);
CREATE INDEX IF NOT EXISTS conversations_created ON conversations (tenant, created_ms);
CREATE TABLE IF NOT EXISTS messages (
    tenant TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    turn INTEGER NOT NULL,
    author TEXT NOT NULL,
    text TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, conversation_id, seq)
);
CREATE TABLE IF NOT EXISTS turn_intents (
    tenant TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    turn INTEGER NOT NULL,
    intents TEXT NOT NULL,
    PRIMARY KEY (tenant, conversation_id, turn)
);
CREATE TABLE IF NOT EXISTS events (
    cursor INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL,
    conversation_id TEXT,
    rep_id TEXT,
    team TEXT,
    payload TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_tenant ON events (tenant, cursor);
CREATE INDEX IF NOT EXISTS events_conversation ON events (tenant, conversation_id, cursor);
CREATE TABLE IF NOT EXISTS retention (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    pruned_through INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS consumers (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    cursor INTEGER NOT NULL,
    PRIMARY KEY (tenant, name)
);
CREATE TABLE IF NOT EXISTS presence (
    tenant TEXT NOT NULL,
    rep_id TEXT NOT NULL,
    online INTEGER NOT NULL,
    capacity INTEGER NOT NULL,
    PRIMARY KEY (tenant, rep_id)
);
CREATE TABLE IF NOT EXISTS round_robin (
    tenant TEXT NOT NULL,
    team TEXT NOT NULL,
    rep_id TEXT NOT NULL,
    assigned INTEGER NOT NULL,
    PRIMARY KEY (tenant, team, rep_id)
);
CREATE TABLE IF NOT EXISTS meetings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    rep_id TEXT NOT NULL,
    start_s INTEGER NOT NULL,
    end_s INTEGER NOT NULL,
    conversation_id TEXT NOT NULL,
    email TEXT,
    created_ms INTEGER NOT NULL,
    UNIQUE (tenant, rep_id, start_s)
);
CREATE INDEX IF NOT EXISTS meetings_created ON meetings (tenant, created_ms);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    role TEXT NOT NULL,
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL,
    revoked_ms INTEGER
);
CREATE TABLE IF NOT EXISTS conversation_claims (
    tenant TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    external_ref TEXT,
    identity TEXT,
    created_ms INTEGER NOT NULL,
    revoked_ms INTEGER,
    PRIMARY KEY (tenant, conversation_id)
);
CREATE TABLE IF NOT EXISTS tenant_documents (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    content BLOB NOT NULL,
    version INTEGER NOT NULL UNIQUE,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, name)
);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (
    tenant TEXT NOT NULL,
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    reply BLOB NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, scope, key)
);
"#;

/// Webhook endpoints and their deliveries (`crate::webhooks`).
pub(super) const WEBHOOKS: &str = r#"
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    url TEXT NOT NULL,
    kinds TEXT NOT NULL,
    description TEXT NOT NULL,
    secret TEXT NOT NULL,
    previous_secret TEXT,
    previous_until_ms INTEGER,
    scan_cursor INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    disabled_ms INTEGER,
    disabled_reason TEXT
);
CREATE INDEX IF NOT EXISTS webhook_endpoints_tenant ON webhook_endpoints (tenant, created_ms);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    cursor INTEGER NOT NULL,
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL,
    conversation_id TEXT,
    body TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,
    last_status INTEGER,
    last_response TEXT NOT NULL DEFAULT '',
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (endpoint_id, cursor)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due
    ON webhook_deliveries (status, next_attempt_ms);
CREATE INDEX IF NOT EXISTS webhook_deliveries_endpoint
    ON webhook_deliveries (endpoint_id, status, cursor);
CREATE INDEX IF NOT EXISTS webhook_deliveries_conversation
    ON webhook_deliveries (endpoint_id, conversation_id, status, cursor);
"#;
