"""The status store's tables, and the upgrades a database made by an earlier release gets when first opened
(docs/getting-started.md#status): written once, run by each backend's `_create_schema`.
"""
from __future__ import annotations

from imgpipe.status.idempotency import KEYS_FROM_REQUESTS, KEYS_TABLE
from imgpipe.status.rendition_rows import RENDITIONS_TABLE

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id VARCHAR PRIMARY KEY,
    status VARCHAR NOT NULL,
    source VARCHAR NOT NULL,
    file_name VARCHAR,
    webhook_url VARCHAR,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    completed_at TIMESTAMP,
    total_images INTEGER,
    error VARCHAR,
    errors_json VARCHAR,
    idempotency_key VARCHAR,
    generation INTEGER NOT NULL DEFAULT 0,
    run_id VARCHAR
);
CREATE TABLE IF NOT EXISTS products (
    request_id VARCHAR NOT NULL,
    serial VARCHAR NOT NULL,
    product_name VARCHAR NOT NULL,
    row_number INTEGER NOT NULL,
    PRIMARY KEY (request_id, row_number)
);
CREATE TABLE IF NOT EXISTS images (
    request_id VARCHAR NOT NULL,
    serial VARCHAR NOT NULL,
    position INTEGER NOT NULL,
    row_number INTEGER NOT NULL,
    input_url VARCHAR NOT NULL,
    status VARCHAR NOT NULL,
    output_path VARCHAR,
    output_url VARCHAR,
    bytes_in BIGINT,
    bytes_out BIGINT,
    quality_in INTEGER,
    quality_out INTEGER,
    format_out VARCHAR,
    error VARCHAR,
    attempts INTEGER NOT NULL DEFAULT 0,
    updated_at TIMESTAMP NOT NULL,
    PRIMARY KEY (request_id, row_number, position)
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    request_id VARCHAR NOT NULL,
    attempt INTEGER NOT NULL,
    url VARCHAR NOT NULL,
    status_code INTEGER,
    error VARCHAR,
    attempted_at TIMESTAMP NOT NULL,
    webhook_id VARCHAR NOT NULL,
    event_type VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS url_validators (
    input_url VARCHAR PRIMARY KEY,
    etag VARCHAR,
    last_modified VARCHAR,
    input_sha256 VARCHAR NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    validated_url VARCHAR
);
CREATE TABLE IF NOT EXISTS content_outputs (
    input_sha256 VARCHAR NOT NULL,
    policy_version INTEGER NOT NULL,
    extension VARCHAR NOT NULL,
    format_out VARCHAR NOT NULL,
    bytes_in BIGINT NOT NULL,
    bytes_out BIGINT NOT NULL,
    quality_in INTEGER,
    quality_out INTEGER,
    note VARCHAR,
    created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (input_sha256, policy_version)
);
CREATE TABLE IF NOT EXISTS purged_requests (
    request_id VARCHAR PRIMARY KEY,
    purged_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_outbox (
    webhook_id VARCHAR PRIMARY KEY,
    request_id VARCHAR NOT NULL,
    url VARCHAR NOT NULL,
    event_type VARCHAR NOT NULL,
    payload VARCHAR NOT NULL,
    state VARCHAR NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at TIMESTAMP NOT NULL,
    first_attempt_at TIMESTAMP,
    next_attempt_at TIMESTAMP NOT NULL
);
""" + KEYS_TABLE + RENDITIONS_TABLE
# Columns added after the first release, as (table, column, type): a database made before them gets them when
# first opened. Only the missing ones are added: an ALTER TABLE locks the table even when it changes nothing,
# which in PostgreSQL deadlocks with other processes' writes.
ADDED_COLUMNS = (
    ("requests", "fresh", "BOOLEAN DEFAULT FALSE"),
    ("images", "obtained", "VARCHAR"),
    ("images", "note", "VARCHAR"),
    ("images", "input_sha256", "VARCHAR"),
    ("images", "download_seconds", "REAL"),
    ("images", "compress_seconds", "REAL"),
    ("requests", "run_key", "VARCHAR"),
    ("requests", "run_key_at", "TIMESTAMP"),
    ("requests", "renditions", "VARCHAR"),
    ("requests", "widths", "VARCHAR"),
)
EXISTING_COLUMNS = ("SELECT table_name, column_name FROM information_schema.columns"
                    " WHERE table_schema = current_schema()")


def upgrades(before: set[tuple[str, str]], after: set[tuple[str, str]]) -> list[str]:
    """What a database made by an earlier release lacks, given its (table, column) pairs `before` SCHEMA ran and
    `after`: the columns added since (ALTER TABLE), and the keys of its requests in the idempotency table."""
    added = [f"ALTER TABLE {table} ADD COLUMN {column} {kind}" for table, column, kind in ADDED_COLUMNS
             if (table, column) not in after]
    return added + ([KEYS_FROM_REQUESTS] if ("idempotency_keys", "idempotency_key") not in before else [])
