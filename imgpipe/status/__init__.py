"""The status store (contract section 4): typed rows, one interface, a DuckDB and a PostgreSQL backend, and the
status document the REST API and the CLI show."""
