-- Runs once, when the container initialises an empty data directory.
CREATE EXTENSION IF NOT EXISTS pg_vision CASCADE;
