-- pg_vision 0.5.0 -> 0.6.0

-- New: asynchronous indexing (src/indexer.rs, sql/indexing.sql): C functions the trigger and
-- the background workers use.
CREATE  FUNCTION "pg_vision_wake_indexer"() RETURNS void
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_vision_wake_indexer_wrapper';

CREATE  FUNCTION "pg_vision_trigger_args"(
	"rel" oid,
	"trigger" TEXT
) RETURNS TEXT[]
STRICT STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_vision_trigger_args_wrapper';

CREATE  FUNCTION "pg_vision_indexer_workers"() RETURNS TABLE (
	"pid" INT,
	"database" TEXT,
	"state" TEXT,
	"relation" oid,
	"since" timestamp with time zone,
	"batches" bigint,
	"rows" bigint,
	"failed" bigint
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_vision_indexer_workers_wrapper';

CREATE  FUNCTION "pg_vision_indexer_batches"() RETURNS TABLE (
	"pid" INT,
	"relation" oid,
	"claimed" INT,
	"rows" INT,
	"failed" INT,
	"retried" INT,
	"started" timestamp with time zone,
	"ended" timestamp with time zone
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_vision_indexer_batches_wrapper';

CREATE  FUNCTION "pg_vision_fetch_image"(
	"url" TEXT
) RETURNS bytea
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_vision_fetch_image_wrapper';

-- New: whether the current role may write a table, directly or through its partitioned parent:
-- who may file error and queue rows for a partition.
CREATE FUNCTION pg_vision_may_write(rel regclass) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
  SELECT pg_catalog.has_table_privilege(rel, 'INSERT, UPDATE')
      OR coalesce((SELECT pg_catalog.bool_or(pg_catalog.has_table_privilege(a.relid, 'INSERT, UPDATE'))
                     FROM pg_catalog.pg_partition_ancestors(rel) a), false);
END;
ALTER POLICY writer_records ON pg_vision_errors
  WITH CHECK (@extschema@.pg_vision_may_write(relation) AND at = pg_catalog.now());

-- Changed: the trigger's configuration has mode=sync|async and image URLs (new OUT columns:
-- the function is dropped and created again).
DROP FUNCTION pg_vision_trigger_config(regclass, text[], text);
CREATE FUNCTION pg_vision_trigger_config(
    rel regclass, args text[], caller text,
    OUT image_column name, OUT targets name[], OUT models text[],
    OUT checksum_column name, OUT on_error text, OUT keep_image boolean,
    OUT mode text, OUT image_is_url boolean)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  arg text;
  col name;
  model text;
  coltype text;
  coltypid oid;
  coltypmod int;
  model_dim int;
BEGIN
  IF coalesce(array_length(args, 1), 0) < 2 THEN
    RAISE EXCEPTION '% on %: needs an image column and at least one <vector column>:<model> argument', caller, rel
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'EXECUTE FUNCTION pg_vision_embed_trigger(''image'', ''embedding:efficientnet'')';
  END IF;
  image_column := args[1];
  targets := '{}'; models := '{}'; keep_image := true;
  mode := coalesce((SELECT substr(a, 6) FROM unnest(args[2:]) a WHERE a LIKE 'mode=%' LIMIT 1), 'sync');
  IF mode NOT IN ('sync', 'async') THEN
    RAISE EXCEPTION '% on %: mode must be sync or async, not "%"', caller, rel, mode
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  on_error := CASE mode WHEN 'async' THEN 'null' ELSE 'reject' END;
  SELECT format_type(atttypid, atttypmod) INTO coltype
    FROM pg_attribute WHERE attrelid = rel AND attname = image_column AND attnum > 0 AND NOT attisdropped;
  image_is_url := mode = 'async' AND coltype IN ('text', 'character varying');
  IF coltype IS NULL OR (coltype <> 'bytea' AND NOT image_is_url) THEN
    RAISE EXCEPTION '% on %: image column "%" %', caller, rel, image_column,
      CASE WHEN coltype IS NULL THEN 'does not exist'
           WHEN coltype IN ('text', 'character varying') THEN 'is ' || coltype || ': image URLs need mode=async (the background workers fetch them)'
           ELSE 'is ' || coltype || ', not bytea (or a text URL with mode=async)' END
      USING ERRCODE = 'undefined_column';
  END IF;
  IF mode = 'async' AND NOT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = rel AND indisprimary) THEN
    RAISE EXCEPTION '% on %: mode=async needs a primary key (the queue names rows by it)', caller, rel
      USING ERRCODE = 'invalid_table_definition', HINT = 'ALTER TABLE ... ADD PRIMARY KEY, or use mode=sync';
  END IF;
  FOREACH arg IN ARRAY args[2:] LOOP
    IF arg LIKE 'mode=%' THEN
      CONTINUE;                         -- read above: it decides the defaults
    ELSIF arg LIKE 'checksum=%' THEN
      checksum_column := substr(arg, 10);
      SELECT format_type(atttypid, atttypmod) INTO coltype
        FROM pg_attribute WHERE attrelid = rel AND attname = checksum_column AND attnum > 0 AND NOT attisdropped;
      IF coltype IS NULL OR coltype NOT IN ('text', 'character varying', 'character(64)') THEN
        RAISE EXCEPTION '% on %: checksum column "%" %', caller, rel, checksum_column,
          CASE WHEN coltype IS NULL THEN 'does not exist' ELSE 'is ' || coltype || ', not text' END
          USING ERRCODE = 'undefined_column';
      END IF;
    ELSIF arg LIKE 'on_error=%' THEN
      on_error := substr(arg, 10);
      IF on_error NOT IN ('reject', 'null') THEN
        RAISE EXCEPTION '% on %: on_error must be reject or null, not "%"', caller, rel, on_error
          USING ERRCODE = 'invalid_parameter_value';
      END IF;
      IF mode = 'async' AND on_error = 'reject' THEN
        RAISE EXCEPTION '% on %: on_error=reject cannot apply with mode=async: the row is committed before it is embedded', caller, rel
          USING ERRCODE = 'invalid_parameter_value',
                HINT = 'drop on_error (async records failures in pg_vision_errors), or use mode=sync';
      END IF;
    ELSIF arg LIKE 'keep_image=%' THEN
      keep_image := substr(arg, 12)::boolean;
      IF mode = 'async' AND NOT keep_image THEN
        RAISE EXCEPTION '% on %: keep_image=false cannot apply with mode=async: the workers read the image after the commit', caller, rel
          USING ERRCODE = 'invalid_parameter_value';
      END IF;
    ELSIF arg LIKE '%:%' THEN
      col := split_part(arg, ':', 1);
      model := split_part(arg, ':', 2);
      SELECT format_type(atttypid, atttypmod), atttypid, atttypmod INTO coltype, coltypid, coltypmod
        FROM pg_attribute WHERE attrelid = rel AND attname = col AND attnum > 0 AND NOT attisdropped;
      IF coltype IS NULL THEN
        RAISE EXCEPTION '% on %: embedding column "%" does not exist', caller, rel, col
          USING ERRCODE = 'undefined_column';
      END IF;
      model_dim := @extschema@.pg_vision_model_dim(model);
      IF model_dim IS NULL THEN
        RAISE EXCEPTION '% on %: unknown model "%" for column "%"', caller, rel, model, col
          USING ERRCODE = 'undefined_object', HINT = 'SELECT * FROM pg_vision_models() lists the models';
      END IF;
      IF coltypid <> '@extschema:vector@.vector'::regtype OR coltypmod NOT IN (-1, model_dim) THEN
        RAISE EXCEPTION '% on %: column "%" is %, but model "%" makes vector(%)', caller, rel, col, coltype, model, model_dim
          USING ERRCODE = 'datatype_mismatch';
      END IF;
      targets := targets || col;
      models := models || model;
    ELSE
      RAISE EXCEPTION '% on %: cannot understand argument "%"', caller, rel, arg
        USING ERRCODE = 'invalid_parameter_value',
              HINT = 'arguments: image column, then <vector column>:<model>, checksum=<column>, on_error=reject|null, keep_image=true|false, mode=sync|async';
    END IF;
  END LOOP;
  IF array_length(targets, 1) IS NULL THEN
    RAISE EXCEPTION '% on %: no <vector column>:<model> argument', caller, rel
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
END $$;

-- Changed: the trigger queues rows in mode=async.
CREATE OR REPLACE FUNCTION pg_vision_embed_trigger() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  cfg record;
  img bytea;
  old_img bytea;
  vec @extschema:vector@.vector;
  changes jsonb := '{}';
  present boolean;
  same boolean;
  i int;
  st text; msg text; hint text;
BEGIN
  IF TG_WHEN <> 'BEFORE' OR TG_LEVEL <> 'ROW' OR TG_OP NOT IN ('INSERT', 'UPDATE') THEN
    RAISE EXCEPTION 'pg_vision_embed_trigger must be a BEFORE INSERT OR UPDATE ... FOR EACH ROW trigger'
      USING ERRCODE = 'invalid_object_definition';
  END IF;
  cfg := @extschema@.pg_vision_trigger_config(TG_RELID::regclass, TG_ARGV[0:TG_NARGS - 1], 'pg_vision_embed_trigger');  -- slices are 1-based
  IF cfg.mode = 'async' THEN
    -- The column may be bytea or a URL (text): compared as what it is.
    EXECUTE format('SELECT ($1).%1$I IS NOT NULL, ($1).%1$I IS NOT DISTINCT FROM ($2).%1$I', cfg.image_column)
      USING NEW, OLD INTO present, same;
    IF TG_OP = 'UPDATE' AND same THEN
      RETURN NEW;                       -- same image: the stored embeddings are still right
    END IF;
    -- Until a worker writes them, the row has no embeddings and no checksum: a search never
    -- finds it by a vector computed from an image it no longer has.
    SELECT jsonb_object_agg(c, NULL) INTO changes
      FROM unnest(cfg.targets || cfg.checksum_column) c WHERE c IS NOT NULL;
    IF present THEN
      INSERT INTO @extschema@.pg_vision_queue (relation, trigger_name, row_key)
      VALUES (TG_RELID::regclass, TG_NAME, @extschema@.pg_vision_row_identity(TG_RELID::regclass, NEW));
      PERFORM @extschema@.pg_vision_wake_indexer();   -- the workers are woken at COMMIT
    END IF;
    RETURN jsonb_populate_record(NEW, changes);
  END IF;
  EXECUTE format('SELECT ($1).%I', cfg.image_column) USING NEW INTO img;
  IF TG_OP = 'UPDATE' THEN
    EXECUTE format('SELECT ($1).%I', cfg.image_column) USING OLD INTO old_img;
    IF img IS NOT DISTINCT FROM old_img THEN
      RETURN NEW;                       -- same bytes: the stored embeddings are still right
    END IF;
  END IF;
  FOR i IN 1 .. array_length(cfg.targets, 1) LOOP
    vec := NULL;
    IF img IS NOT NULL THEN
      BEGIN
        vec := @extschema@.embed_image(cfg.models[i], img);
      EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
        IF cfg.on_error = 'reject' THEN
          RAISE EXCEPTION 'cannot embed %.% of row % with model "%": %', TG_RELID::regclass, cfg.image_column,
                @extschema@.pg_vision_row_identity(TG_RELID::regclass, NEW), cfg.models[i], msg
            USING ERRCODE = st, HINT = coalesce(nullif(hint, ''),
                  'fix the image, or create the trigger with on_error=null to store the row without embeddings');
        END IF;
        RAISE WARNING 'stored row % of % without "%": %', @extschema@.pg_vision_row_identity(TG_RELID::regclass, NEW),
              TG_RELID::regclass, cfg.targets[i], msg;
        PERFORM @extschema@.pg_vision_record_error(TG_RELID::regclass, @extschema@.pg_vision_row_identity(TG_RELID::regclass, NEW),
                                                   cfg.image_column, cfg.models[i], st, msg);
      END;
    END IF;
    changes := changes || jsonb_build_object(cfg.targets[i], vec::text);
  END LOOP;
  IF cfg.checksum_column IS NOT NULL THEN
    changes := changes || jsonb_build_object(cfg.checksum_column, @extschema@.image_checksum(img));
  END IF;
  IF NOT cfg.keep_image THEN
    changes := changes || jsonb_build_object(cfg.image_column, NULL);
  END IF;
  NEW := jsonb_populate_record(NEW, changes);
  RETURN NEW;
END $$;

-- New: the queue, the workers' batch, the wait function and the status view.
-- Asynchronous indexing: the trigger's mode=async (sql/trigger.sql) queues rows here, and
-- pg_vision's background workers (src/indexer.rs) embed them after the commit.
--
-- A queue row names a table row by its primary key. A worker takes a batch of due rows
-- (FOR UPDATE SKIP LOCKED, so workers share the queue), reads each row's current image,
-- embeds the batch through embed_images, and writes the vectors and the checksum only if
-- the image is still the one it read ("compare and set"), then deletes the queue rows,
-- all in one transaction: a crash at any point leaves the queue rows for the next try, and
-- a row changed meanwhile was queued again by its own UPDATE. Writing the same vector
-- twice is harmless. The worker runs this file's functions as the table's owner, in a
-- security-restricted context (what autovacuum and REFRESH MATERIALIZED VIEW do): never
-- with more rights than the owner.

CREATE TABLE pg_vision_queue (
    id           bigserial PRIMARY KEY,
    relation     regclass NOT NULL,
    trigger_name name NOT NULL,
    row_key      jsonb NOT NULL,
    queued_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    attempts     int NOT NULL DEFAULT 0,
    next_try     timestamptz NOT NULL DEFAULT '-infinity',
    last_error   text
);
COMMENT ON TABLE pg_vision_queue IS 'rows waiting for pg_vision''s background workers (trigger mode=async)';
CREATE INDEX pg_vision_queue_relation ON pg_vision_queue (relation, id);
SELECT pg_catalog.pg_extension_config_dump('pg_vision_queue', '');
SELECT pg_catalog.pg_extension_config_dump('pg_vision_queue_id_seq', '');

-- Who sees and changes queue rows: as for pg_vision_errors. Rows are queued by whoever
-- inserts or updates the table (the trigger runs as that role) and seen by them too (so
-- pg_vision_wait_for_indexing works for an application role); the workers take and
-- delete them as the table's owner.
ALTER TABLE pg_vision_queue ENABLE ROW LEVEL SECURITY;
CREATE POLICY writer_queues ON pg_vision_queue FOR INSERT
  WITH CHECK (@extschema@.pg_vision_may_write(relation));
CREATE POLICY writer_reads ON pg_vision_queue FOR SELECT
  USING (@extschema@.pg_vision_owns(relation) OR @extschema@.pg_vision_may_write(relation));
CREATE POLICY owner_updates ON pg_vision_queue FOR UPDATE
  USING (@extschema@.pg_vision_owns(relation));
CREATE POLICY owner_deletes ON pg_vision_queue FOR DELETE
  USING (@extschema@.pg_vision_owns(relation));
GRANT SELECT, INSERT, UPDATE, DELETE ON pg_vision_queue TO PUBLIC;
GRANT USAGE ON SEQUENCE pg_vision_queue_id_seq TO PUBLIC;

-- Whether a failure may go away by itself (retried with backoff) or will not (recorded at
-- once): bad or unsupported images, and images over the limits, stay bad.
CREATE FUNCTION pg_vision_permanent_failure(sqlstate text) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN left(sqlstate, 2) IN ('22', '0A', '54');

-- One batch of one table's queue, run by a worker as the table's owner. Returns what it
-- did: claimed queue rows, rows embedded, rows failed for good (in pg_vision_errors), rows
-- put back to retry later. Rows of other workers' batches are skipped, never waited for.
CREATE FUNCTION pg_vision_index_batch(rel regclass, batch_size int, max_attempts int,
    OUT claimed int, OUT embedded int, OUT failed int, OUT retried int)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET lock_timeout = '1s' AS $$
DECLARE
  trig name;
  cfg record;
  ids bigint[];
  keys jsonb[];           -- the distinct rows of the batch
  tries int[];            -- their queue rows' attempts so far (the largest)
  found_keys jsonb[];
  urls text[];            -- each row's image URL (an image column of text), else NULLs
  images bytea[];
  pk_match text;
  set_list text;
  n int;
  i int;
  j int;
  vecs @extschema:vector@.vector[];
  one @extschema:vector@.vector;
  changes jsonb[];        -- per row: the columns to write
  err_state text[];       -- per row: the first failure, or NULL
  err_msg text[];
  st text; msg text;
  done_keys jsonb[] := '{}';
  key jsonb;
BEGIN
  claimed := 0; embedded := 0; failed := 0; retried := 0;
  -- One trigger's rows per batch (a table may have several pg_vision triggers).
  SELECT q.trigger_name INTO trig FROM @extschema@.pg_vision_queue q
   WHERE q.relation = rel AND q.next_try <= now() ORDER BY q.id LIMIT 1 FOR UPDATE SKIP LOCKED;
  IF NOT FOUND THEN
    RETURN;
  END IF;
  SELECT array_agg(q.id), array_agg(DISTINCT q.row_key) INTO ids, keys
    FROM (SELECT id, row_key FROM @extschema@.pg_vision_queue
           WHERE relation = rel AND trigger_name = trig AND next_try <= now()
           ORDER BY id LIMIT batch_size FOR UPDATE SKIP LOCKED) q;
  claimed := coalesce(array_length(ids, 1), 0);
  IF claimed = 0 THEN
    RETURN;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = rel AND tgname = trig) THEN
    -- The trigger was dropped: nobody asked for these rows any more.
    DELETE FROM @extschema@.pg_vision_queue WHERE id = ANY (ids);
    RETURN;
  END IF;
  cfg := @extschema@.pg_vision_trigger_config(rel, @extschema@.pg_vision_trigger_args(rel, trig), 'pg_vision indexer');
  SELECT string_agg(format('t.%1$I = r.%1$I', a.attname), ' AND ') INTO pk_match
    FROM pg_index x JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = ANY (x.indkey)
   WHERE x.indrelid = rel AND x.indisprimary;

  -- The rows as they are now; a row deleted (or truncated) since is simply done.
  EXECUTE format('SELECT array_agg(k.key ORDER BY k.n), array_agg(%s ORDER BY k.n), array_agg(%s ORDER BY k.n)
                    FROM unnest($1) WITH ORDINALITY AS k(key, n)
                    CROSS JOIN LATERAL jsonb_populate_record(NULL::%s, k.key) r
                    JOIN %s t ON %s
                   WHERE t.%I IS NOT NULL',
                 CASE WHEN cfg.image_is_url THEN format('t.%I::text', cfg.image_column) ELSE 'NULL::text' END,
                 CASE WHEN cfg.image_is_url THEN 'NULL::bytea' ELSE format('t.%I', cfg.image_column) END,
                 rel, rel, pk_match, cfg.image_column)
    INTO found_keys, urls, images USING keys;
  n := coalesce(array_length(found_keys, 1), 0);
  err_state := array_fill(NULL::text, ARRAY[n]);
  err_msg := array_fill(NULL::text, ARRAY[n]);
  changes := array_fill('{}'::jsonb, ARRAY[n]);

  IF cfg.image_is_url THEN
    -- Only background workers may fetch (pg_vision_fetch_image refuses anyone else).
    FOR j IN 1 .. n LOOP
      BEGIN
        images[j] := @extschema@.pg_vision_fetch_image(urls[j]);
      EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
        images[j] := NULL; err_state[j] := st; err_msg[j] := msg;
      END;
    END LOOP;
  END IF;

  FOR i IN 1 .. array_length(cfg.targets, 1) LOOP
    EXIT WHEN n = 0;
    BEGIN
      vecs := @extschema@.embed_images(cfg.models[i], images);   -- NULL in, NULL out
    EXCEPTION WHEN OTHERS THEN
      -- One bad image fails the whole batch: redo it one image at a time.
      vecs := '{}';
      FOR j IN 1 .. n LOOP
        one := NULL;
        IF images[j] IS NOT NULL THEN
          BEGIN
            one := @extschema@.embed_image(cfg.models[i], images[j]);
          EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
            IF err_state[j] IS NULL THEN
              err_state[j] := st;
              err_msg[j] := format('model "%s": %s', cfg.models[i], msg);
            END IF;
          END;
        END IF;
        vecs := vecs || one;
      END LOOP;
    END;
    FOR j IN 1 .. n LOOP
      changes[j] := changes[j] || jsonb_build_object(cfg.targets[i], vecs[j]::text);
    END LOOP;
  END LOOP;

  SELECT string_agg(format('%1$I = r.%1$I', c), ', ') INTO set_list
    FROM unnest(cfg.targets || cfg.checksum_column) c WHERE c IS NOT NULL;
  FOR j IN 1 .. n LOOP
    key := found_keys[j];
    IF err_state[j] IS NOT NULL AND NOT @extschema@.pg_vision_permanent_failure(err_state[j]) THEN
      CONTINUE;                         -- retried below, nothing written
    END IF;
    IF cfg.checksum_column IS NOT NULL AND images[j] IS NOT NULL THEN
      changes[j] := changes[j] || jsonb_build_object(cfg.checksum_column, @extschema@.image_checksum(images[j]));
    END IF;
    BEGIN
      -- Compare and set: written only if the row still has the image (or URL) that was
      -- embedded. Under READ COMMITTED a concurrent change is re-checked on the newest row.
      EXECUTE format('UPDATE %s t SET %s FROM jsonb_populate_record(NULL::%s, $1) r
                       WHERE %s AND CASE WHEN $4 THEN t.%I::text = $2 ELSE t.%I::bytea = $3 END',
                     rel, set_list, rel, pk_match, cfg.image_column, cfg.image_column)
        USING key || changes[j], urls[j], images[j], cfg.image_is_url;
    EXCEPTION WHEN OTHERS THEN
      GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
      err_state[j] := st; err_msg[j] := 'writing the embeddings: ' || msg;
      CONTINUE;
    END;
    IF err_state[j] IS NULL THEN
      embedded := embedded + 1;
    ELSE
      failed := failed + 1;
      PERFORM @extschema@.pg_vision_record_error(rel, key, cfg.image_column, 'indexer', err_state[j], err_msg[j]);
    END IF;
    done_keys := done_keys || key;
  END LOOP;

  -- Transient failures: tried again after 2, 4, 8 ... seconds (at most an hour), given up
  -- (and recorded) after max_attempts tries.
  FOR j IN 1 .. n LOOP
    CONTINUE WHEN err_state[j] IS NULL OR found_keys[j] = ANY (done_keys);
    IF (SELECT max(attempts) FROM @extschema@.pg_vision_queue WHERE id = ANY (ids) AND row_key = found_keys[j]) + 1 >= max_attempts THEN
      failed := failed + 1;
      PERFORM @extschema@.pg_vision_record_error(rel, found_keys[j], cfg.image_column, 'indexer', err_state[j],
                                                 format('gave up after %s tries: %s', max_attempts, err_msg[j]));
      done_keys := done_keys || found_keys[j];
    ELSE
      retried := retried + 1;
      UPDATE @extschema@.pg_vision_queue
         SET attempts = attempts + 1,
             next_try = now() + least(make_interval(secs => 2 ^ (attempts + 1)), interval '1 hour'),
             last_error = err_state[j] || ': ' || err_msg[j]
       WHERE id = ANY (ids) AND row_key = found_keys[j];
    END IF;
  END LOOP;
  -- Done: written, failed for good, or gone from the table.
  DELETE FROM @extschema@.pg_vision_queue
   WHERE id = ANY (ids) AND (row_key = ANY (done_keys) OR NOT row_key = ANY (coalesce(found_keys, '{}')));
END $$;

-- Waits until the table (with its partitions) has no queued rows, at most `timeout`.
-- true: everything queued before the call is embedded (or failed, see pg_vision_errors).
CREATE FUNCTION pg_vision_wait_for_indexing(rel regclass, timeout interval DEFAULT '1 minute') RETURNS boolean
LANGUAGE plpgsql VOLATILE STRICT SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  deadline timestamptz := clock_timestamp() + timeout;
  rels regclass[];
BEGIN
  -- A partitioned table's rows are queued under its partitions (pg_partition_tree lists
  -- nothing for a table that is not partitioned).
  rels := ARRAY[rel] || coalesce((SELECT array_agg(relid) FROM pg_partition_tree(rel) WHERE relid <> rel), '{}');
  IF EXISTS (SELECT 1 FROM @extschema@.pg_vision_queue
              WHERE relation = ANY (rels) AND xmin::text::bigint = (pg_current_xact_id_if_assigned()::text::bigint % 4294967296)) THEN
    RAISE EXCEPTION 'pg_vision_wait_for_indexing: this transaction queued rows of % itself, and the workers see them only after it commits', rel
      USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'COMMIT first, then wait';
  END IF;
  LOOP
    IF NOT EXISTS (SELECT 1 FROM @extschema@.pg_vision_queue WHERE relation = ANY (rels)) THEN
      RETURN true;
    END IF;
    IF clock_timestamp() >= deadline THEN
      RETURN false;
    END IF;
    PERFORM pg_sleep(0.02);
  END LOOP;
END $$;

-- The state of asynchronous indexing, per table the caller can see the queue of: rows
-- queued, of which waiting to be retried, the oldest queued row's age, the workers' rate
-- over their recent batches, the time left at that rate, the workers on it now, and the
-- latest failure recorded.
CREATE VIEW pg_vision_indexing WITH (security_invoker = true) AS
WITH queued AS (
  SELECT relation, count(*) AS queued, count(*) FILTER (WHERE next_try > now()) AS retrying,
         now() - min(queued_at) AS oldest, max(last_error) AS retry_error
    FROM @extschema@.pg_vision_queue GROUP BY relation
), recent AS (
  SELECT relation, sum(rows) / greatest(extract(epoch FROM max(ended) - min(started)), 1e-3) AS rows_per_s,
         count(DISTINCT pid) FILTER (WHERE ended > now() - interval '2 seconds') AS workers
    FROM @extschema@.pg_vision_indexer_batches()
   WHERE ended > now() - interval '10 seconds'
     AND (@extschema@.pg_vision_owns(relation) OR @extschema@.pg_vision_may_write(relation))
   GROUP BY relation
)
SELECT r AS relation,
       coalesce(q.queued, 0) AS queued,
       coalesce(q.retrying, 0) AS retrying,
       q.oldest,
       round(coalesce(b.rows_per_s, 0)::numeric, 1) AS rows_per_s,
       CASE WHEN b.rows_per_s > 0 THEN make_interval(secs => round(coalesce(q.queued, 0) / b.rows_per_s)) END AS eta,
       coalesce(b.workers, 0) AS workers,
       coalesce(q.retry_error,
                (SELECT e.sqlstate || ': ' || e.message FROM @extschema@.pg_vision_errors e
                  WHERE e.relation = r ORDER BY e.id DESC LIMIT 1)) AS last_error
  FROM queued q FULL JOIN recent b ON b.relation = q.relation,
       LATERAL (SELECT coalesce(q.relation, b.relation) AS r) x;
COMMENT ON VIEW pg_vision_indexing IS 'asynchronous indexing per table: queue depth, rate, age, workers, last error';
GRANT SELECT ON pg_vision_indexing TO PUBLIC;

-- ============================================================================================
-- Shared weights (issue 12 part 5; src/budget.rs, src/memory_views.rs). Kept apart from the
-- rest of this script: the budget counts each backend's private bytes, and each mapped
-- (shared) weights file once for the cluster. pg_vision_memory gains the file a row maps and
-- its bytes; pg_vision_memory_summary gains private, shared and shared_files. New output
-- columns need the functions (and the views over them) dropped and created again.
DROP VIEW pg_vision_memory;
DROP VIEW pg_vision_memory_summary;
DROP FUNCTION pg_vision_memory();
DROP FUNCTION pg_vision_memory_summary();
CREATE FUNCTION "pg_vision_memory"() RETURNS TABLE (
	"pid" INT,
	"model" TEXT,
	"tower" TEXT,
	"bytes" bigint,
	"last_used" timestamp with time zone,
	"calls" bigint,
	"shared_file" TEXT,
	"shared_bytes" bigint
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_vision_memory_wrapper';
CREATE FUNCTION "pg_vision_memory_summary"() RETURNS TABLE (
	"budget" bigint,
	"used" bigint,
	"backends" INT,
	"models" INT,
	"evictions" bigint,
	"cluster_wide" bool,
	"private" bigint,
	"shared" bigint,
	"shared_files" INT
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_vision_memory_summary_wrapper';
CREATE VIEW pg_vision_memory AS SELECT * FROM pg_vision_memory();
COMMENT ON VIEW pg_vision_memory IS 'models held in memory, per backend and tower (whole cluster with shared_preload_libraries): bytes private to the backend, and the shared weights file it maps';
CREATE VIEW pg_vision_memory_summary AS SELECT * FROM pg_vision_memory_summary();
COMMENT ON VIEW pg_vision_memory_summary IS 'pg_vision.memory_budget, bytes in use (private bytes plus each shared weights file once), backends holding models, evictions so far';
REVOKE EXECUTE ON FUNCTION pg_vision_memory(), pg_vision_memory_summary() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pg_vision_memory(), pg_vision_memory_summary() TO pg_monitor;
GRANT SELECT ON pg_vision_memory, pg_vision_memory_summary TO pg_monitor;
-- ============================================================================================
