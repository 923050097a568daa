-- One embedding per search, whatever form the query takes and whatever plan PostgreSQL
-- picks. Each form is a prepared statement, as drivers send them (psycopg after five
-- executions, Npgsql's Prepare(), JDBC, node-postgres named statements), run eight times
-- with a new upload each time under each plan_cache_mode: 'auto' may switch from custom
-- to generic plans after five executions; a generic plan cannot fold the IMMUTABLE call and
-- evaluates it for the ORDER BY key and again for every row. Counted, not timed: `calls`
-- in pg_vision_loaded_models() counts the runs of the model, which the memo
-- (pg_vision_memo(); it lasts one transaction) saves.
\getenv helpers PGV_REGRESS_HELPERS
\i :helpers
CREATE TABLE shots (id int PRIMARY KEY, emb vector(1280));
INSERT INTO shots
  SELECT n, v FROM unnest(embed_images('efficientnet', ARRAY(
           SELECT pg_read_binary_file(:'testdata' || '/' || f)
             FROM unnest(ARRAY['chelsea.png', 'coffee.png', 'rocket.jpg', 'cmyk.jpg', 'upright.jpg']) f)))
         WITH ORDINALITY AS t(v, n);
CREATE INDEX ON shots USING hnsw (emb vector_cosine_ops);
-- The upload: a JPEG; bytes appended after its end-of-image marker make each execution's
-- upload new to the memo while decoding to the same picture.
CREATE TABLE upload AS SELECT pg_read_binary_file(:'testdata' || '/rocket.jpg') AS img;
SELECT embed_efficientnet(img || '\x00'::bytea) = embed_efficientnet(img) AS trailing_bytes_ignored FROM upload;

CREATE FUNCTION search_shots(img bytea) RETURNS TABLE (id int, similarity float8) LANGUAGE plpgsql AS $$
BEGIN
  RETURN QUERY SELECT s.id, 1 - (s.emb <=> embed_efficientnet(img)) FROM shots s
                ORDER BY s.emb <=> embed_efficientnet(img) LIMIT 3;
END $$;

PREPARE twice(bytea) AS
  SELECT id, 1 - (emb <=> embed_efficientnet($1)) AS similarity FROM shots
   ORDER BY emb <=> embed_efficientnet($1) LIMIT 3;
PREPARE generic_name(bytea) AS
  SELECT id, 1 - (emb <=> embed_image('efficientnet', $1)::vector(1280)) AS similarity FROM shots
   ORDER BY emb <=> embed_image('efficientnet', $1)::vector(1280) LIMIT 3;
PREPARE subquery(bytea) AS
  SELECT id, 1 - (emb <=> q.v) AS similarity FROM shots, (SELECT embed_efficientnet($1) AS v) q
   ORDER BY emb <=> q.v LIMIT 3;
PREPARE cte(bytea) AS
  WITH q AS (SELECT embed_efficientnet($1) AS v)
  SELECT id, 1 - (emb <=> q.v) AS similarity FROM shots, q ORDER BY emb <=> q.v LIMIT 3;
PREPARE cte_materialized(bytea) AS
  WITH q AS MATERIALIZED (SELECT embed_efficientnet($1) AS v)
  SELECT id, 1 - (emb <=> (SELECT v FROM q)) AS similarity FROM shots ORDER BY emb <=> (SELECT v FROM q) LIMIT 3;
PREPARE lateral_join(bytea) AS
  SELECT s.id, 1 - s.distance AS similarity
    FROM (SELECT embed_efficientnet($1) AS v) q
   CROSS JOIN LATERAL (SELECT id, emb <=> q.v AS distance FROM shots ORDER BY emb <=> q.v LIMIT 3) s;
PREPARE plpgsql(bytea) AS SELECT * FROM search_shots($1);

-- Runs a prepared statement `runs` times under plan_cache_mode `mode`, each time with a
-- new upload; returns the model runs of each execution.
CREATE FUNCTION pg_temp.inferences(stmt text, mode text, runs int) RETURNS int[] LANGUAGE plpgsql AS $$
DECLARE
  out int[] := '{}';
  before bigint;
  up bytea := (SELECT img FROM upload);
BEGIN
  PERFORM set_config('plan_cache_mode', mode, true);
  FOR i IN 1..runs LOOP
    SELECT calls INTO before FROM pg_vision_loaded_models() WHERE name = 'efficientnet' AND tower = 'image';
    EXECUTE format('EXECUTE %I(%L::bytea)', stmt, up || int4send(nextval('upload_variant')::int));
    out := out || (SELECT (calls - before)::int FROM pg_vision_loaded_models()
                    WHERE name = 'efficientnet' AND tower = 'image');
  END LOOP;
  RETURN out;
END $$;
CREATE TEMP SEQUENCE upload_variant;

-- Every form, every plan: one model run per execution.
SELECT name,
       pg_temp.inferences(name, 'force_custom_plan', 3) AS custom,
       pg_temp.inferences(name, 'force_generic_plan', 3) AS generic,
       pg_temp.inferences(name, 'auto', 8) AS auto
  FROM pg_prepared_statements ORDER BY name;
-- The plans PostgreSQL made (14 executions each), so the counts above are known to cover
-- both kinds: under 'auto' it kept custom plans for the statements that call the model
-- themselves (folding the call saves its COST, more than planning costs).
SELECT name, custom_plans, generic_plans FROM pg_prepared_statements ORDER BY name;
DEALLOCATE ALL;

-- The memo can be turned off: then a generic plan runs the model for the ORDER BY key and
-- again for each of the three rows it returns.
SET pg_vision.memo_entries = 0;
PREPARE twice(bytea) AS
  SELECT id, 1 - (emb <=> embed_efficientnet($1)) AS similarity FROM shots
   ORDER BY emb <=> embed_efficientnet($1) LIMIT 3;
SELECT pg_temp.inferences('twice', 'force_generic_plan', 2) AS generic_without_memo;
SELECT entries, bytes FROM pg_vision_memo();
RESET pg_vision.memo_entries;
SELECT pg_temp.inferences('twice', 'force_generic_plan', 2) AS generic_with_memo;

-- Within a transaction, the same upload again is not run again; a changed setting that
-- alters the result is a new key, so it never gets the vector computed under the old one.
-- The memo is emptied when the transaction ends.
SELECT pg_vision_unload('efficientnet');
BEGIN;
SELECT embed_efficientnet(img) IS NOT NULL AS first, embed_efficientnet(img) IS NOT NULL AS again FROM upload;
SELECT calls FROM pg_vision_loaded_models() WHERE name = 'efficientnet';
SET LOCAL pg_vision.jpeg_dct_scaling = off;
SELECT embed_efficientnet(img) IS NOT NULL AS other_setting FROM upload;
SELECT calls FROM pg_vision_loaded_models() WHERE name = 'efficientnet';
SET LOCAL pg_vision.jpeg_dct_scaling = on;
SELECT embed_efficientnet(img) IS NOT NULL AS first_setting_again FROM upload;
SELECT calls FROM pg_vision_loaded_models() WHERE name = 'efficientnet';
SELECT entries, last_input_bytes > 0 AS input_copied FROM pg_vision_memo();
COMMIT;
SELECT entries, bytes, last_input_bytes FROM pg_vision_memo();
SELECT embed_efficientnet(img) IS NOT NULL AS next_transaction FROM upload;
SELECT calls FROM pg_vision_loaded_models() WHERE name = 'efficientnet';

-- Bounded in entries (and bytes: pg_vision.memo_memory, superuser-set), visible.
BEGIN;
SET LOCAL pg_vision.memo_entries = 2;
SELECT count(embed_efficientnet(img || int4send(n))) FROM upload, generate_series(1, 5) n;
SELECT entries, max_entries, bytes <= max_bytes AS within_bytes, evictions >= 3 AS evicted FROM pg_vision_memo();
COMMIT;
SELECT name, setting, unit, context FROM pg_settings WHERE name IN ('pg_vision.memo_entries', 'pg_vision.memo_memory') ORDER BY name;

-- What the planner is told a call costs (in cpu_operator_cost units; README, "Search queries").
SELECT proname, procost FROM pg_proc
 WHERE proname IN ('embed_image', 'embed_text', 'embed_images', 'embed_efficientnet', 'embed_fclip_text')
 ORDER BY proname;
