#!/usr/bin/env bash
# Runs once, when the container initialises an empty data directory (the official image's
# /docker-entrypoint-initdb.d), as the superuser: creates the extension, and the
# least-privilege role the application connects as. That role owns the schema `shop`
# (its tables, their triggers); it is not a superuser and cannot create roles or databases.
set -euo pipefail
: "${APP_PASSWORD:?APP_PASSWORD must be set}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -v app_password="$APP_PASSWORD" <<'SQL'
CREATE EXTENSION IF NOT EXISTS pg_vision CASCADE;
CREATE ROLE resys_app LOGIN PASSWORD :'app_password' NOSUPERUSER NOCREATEDB NOCREATEROLE;
CREATE SCHEMA shop AUTHORIZATION resys_app;
ALTER ROLE resys_app SET search_path = shop, public;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
SQL
