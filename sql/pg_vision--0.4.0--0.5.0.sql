-- pg_vision 0.4.0 -> 0.5.0

-- New: pg_vision_memo(), this connection's memo of recent embeddings (src/memo.rs).
CREATE FUNCTION "pg_vision_memo"() RETURNS TABLE (
	"entries" bigint,
	"bytes" bigint,
	"last_input_bytes" bigint,
	"max_entries" bigint,
	"max_bytes" bigint,
	"hits" bigint,
	"misses" bigint,
	"evictions" bigint
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_vision_memo_wrapper';

-- Changed: the per-model counter `hits` is now `calls`, the calls that ran the model
-- (results served from the memo do not run it), in pg_vision_loaded_models() and in
-- pg_vision_memory. A renamed output column needs the function dropped and created again.
DROP FUNCTION pg_vision_loaded_models();
CREATE FUNCTION "pg_vision_loaded_models"() RETURNS TABLE (
	"name" TEXT,
	"tower" TEXT,
	"file_bytes" bigint,
	"bytes" bigint,
	"load_ms" double precision,
	"calls" bigint
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_vision_loaded_models_wrapper';

DROP VIEW pg_vision_memory;
DROP FUNCTION pg_vision_memory();
CREATE FUNCTION "pg_vision_memory"() RETURNS TABLE (
	"pid" INT,
	"model" TEXT,
	"tower" TEXT,
	"bytes" bigint,
	"last_used" timestamp with time zone,
	"calls" bigint
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_vision_memory_wrapper';
CREATE VIEW pg_vision_memory AS SELECT * FROM pg_vision_memory();
COMMENT ON VIEW pg_vision_memory IS 'models held in memory, per backend and tower (whole cluster with shared_preload_libraries)';
REVOKE EXECUTE ON FUNCTION pg_vision_memory() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pg_vision_memory() TO pg_monitor;
GRANT SELECT ON pg_vision_memory TO pg_monitor;

-- Changed: what the planner is told a call costs, in cpu_operator_cost units (was the
-- default, 1 for C functions and 100 for SQL ones): an image embedding takes milliseconds.
ALTER FUNCTION embed_image(text, bytea) COST 250000;
ALTER FUNCTION embed_image_output(text, bytea, text) COST 250000;
ALTER FUNCTION pg_vision_profile(text, bytea) COST 250000;
ALTER FUNCTION embed_images(text, bytea[], integer) COST 1000000;
ALTER FUNCTION embed_text(text, text) COST 100000;
ALTER FUNCTION embed_efficientnet(bytea) COST 250000;
ALTER FUNCTION embed_fclip(bytea) COST 250000;
ALTER FUNCTION embed_fclip_text(text) COST 100000;
