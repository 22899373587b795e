#!/bin/sh
# The role pgwarren runs as: LOGIN REPLICATION and SELECT, no superuser, owns nothing (README,
# Postgres prerequisites). Its password comes from the compose secret pgwarren_db_password.
# Runs once, as the owner (POSTGRES_USER), after 10-schema.sql. The entrypoint may source this
# file instead of executing it, so it neither exits nor changes shell options.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v password="$(cat /run/secrets/pgwarren_db_password)" -v db="$POSTGRES_DB" <<'SQL'
CREATE ROLE pgwarren WITH LOGIN REPLICATION PASSWORD :'password';
GRANT CONNECT ON DATABASE :"db" TO pgwarren;
GRANT USAGE ON SCHEMA public TO pgwarren;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO pgwarren;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO pgwarren;
SQL
