"""The status store (docs/getting-started.md#status): typed rows, one interface, a DuckDB and a PostgreSQL
backend, and the status document the REST API and the CLI show."""
