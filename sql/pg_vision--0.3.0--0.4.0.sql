-- pg_vision 0.3.0 -> 0.4.0

-- Changed: image_checksum() is computed by PostgreSQL (sha256 + encode) instead of a C
-- function of its own; same results. The SQL-standard body binds pg_catalog's functions at
-- creation, so no search_path can redirect it.
CREATE OR REPLACE FUNCTION image_checksum(image bytea) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
BEGIN ATOMIC
  SELECT pg_catalog.encode(pg_catalog.sha256(image), 'hex');
END;
COMMENT ON FUNCTION image_checksum(bytea) IS 'SHA-256 of the image bytes, lower-case hex';


-- Application roles: error records and backfill progress under row-level security, written
-- by the roles that write the table (see sql/trigger.sql); every function with a pinned
-- search_path; warm-up and other sessions' memory need a grant (sql/privileges.sql).
-- Whether the current role owns `rel` (or is a member of its owner): who sees a relation's
-- rows in pg_vision_errors and pg_vision_backfill_progress.
CREATE FUNCTION pg_vision_owns(rel regclass) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
  SELECT pg_catalog.pg_has_role(c.relowner, 'USAGE') FROM pg_catalog.pg_class c WHERE c.oid = rel;
END;
ALTER TABLE pg_vision_errors ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_reads ON pg_vision_errors FOR SELECT
  USING (@extschema@.pg_vision_owns(relation));
CREATE POLICY owner_deletes ON pg_vision_errors FOR DELETE
  USING (@extschema@.pg_vision_owns(relation));
CREATE POLICY writer_records ON pg_vision_errors FOR INSERT
  WITH CHECK (pg_catalog.has_table_privilege(relation, 'INSERT, UPDATE') AND at = pg_catalog.now());
GRANT SELECT, INSERT, DELETE ON pg_vision_errors TO PUBLIC;
GRANT USAGE ON SEQUENCE pg_vision_errors_id_seq TO PUBLIC;

CREATE OR REPLACE FUNCTION pg_vision_row_identity(rel regclass, r anyelement) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
  SELECT coalesce(
    (SELECT jsonb_object_agg(a.attname, to_jsonb(r) -> a.attname)
       FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
      WHERE i.indrelid = rel AND i.indisprimary),
    '{}'::jsonb)
$$;

CREATE OR REPLACE FUNCTION pg_vision_trigger_config(
    rel regclass, args text[], caller text,
    OUT image_column name, OUT targets name[], OUT models text[],
    OUT checksum_column name, OUT on_error text, OUT keep_image boolean)
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
  targets := '{}'; models := '{}'; on_error := 'reject'; keep_image := true;
  SELECT format_type(atttypid, atttypmod) INTO coltype
    FROM pg_attribute WHERE attrelid = rel AND attname = image_column AND attnum > 0 AND NOT attisdropped;
  IF coltype IS NULL OR coltype <> 'bytea' THEN
    RAISE EXCEPTION '% on %: image column "%" %', caller, rel, image_column,
      CASE WHEN coltype IS NULL THEN 'does not exist' ELSE 'is ' || coltype || ', not bytea' END
      USING ERRCODE = 'undefined_column';
  END IF;
  FOREACH arg IN ARRAY args[2:] LOOP
    IF arg LIKE 'checksum=%' THEN
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
    ELSIF arg LIKE 'keep_image=%' THEN
      keep_image := substr(arg, 12)::boolean;
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
              HINT = 'arguments: image column, then <vector column>:<model>, checksum=<column>, on_error=reject|null, keep_image=true|false';
    END IF;
  END LOOP;
  IF array_length(targets, 1) IS NULL THEN
    RAISE EXCEPTION '% on %: no <vector column>:<model> argument', caller, rel
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
END $$;

CREATE FUNCTION pg_vision_record_error(rel regclass, row_identity jsonb, image_column name, model text,
                                       sqlstate text, message text) RETURNS void
LANGUAGE sql VOLATILE STRICT SET search_path = pg_catalog, pg_temp AS $$
  INSERT INTO @extschema@.pg_vision_errors (relation, row_identity, image_column, model, sqlstate, message)
  VALUES (rel, row_identity, image_column, model, sqlstate, message)
$$;

CREATE OR REPLACE FUNCTION pg_vision_embed_trigger() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  cfg record;
  img bytea;
  old_img bytea;
  vec @extschema:vector@.vector;
  changes jsonb := '{}';
  i int;
  st text; msg text; hint text;
BEGIN
  IF TG_WHEN <> 'BEFORE' OR TG_LEVEL <> 'ROW' OR TG_OP NOT IN ('INSERT', 'UPDATE') THEN
    RAISE EXCEPTION 'pg_vision_embed_trigger must be a BEFORE INSERT OR UPDATE ... FOR EACH ROW trigger'
      USING ERRCODE = 'invalid_object_definition';
  END IF;
  cfg := @extschema@.pg_vision_trigger_config(TG_RELID::regclass, TG_ARGV[0:TG_NARGS - 1], 'pg_vision_embed_trigger');  -- slices are 1-based
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

ALTER TABLE pg_vision_backfill_progress ENABLE ROW LEVEL SECURITY;
CREATE POLICY reader ON pg_vision_backfill_progress FOR SELECT
  USING (@extschema@.pg_vision_owns(relation)
         OR pg_catalog.has_table_privilege(relation, 'UPDATE'));
CREATE POLICY writer_inserts ON pg_vision_backfill_progress FOR INSERT
  WITH CHECK (pg_catalog.has_table_privilege(relation, 'UPDATE'));
CREATE POLICY writer_updates ON pg_vision_backfill_progress FOR UPDATE
  USING (pg_catalog.has_table_privilege(relation, 'UPDATE'));
CREATE POLICY owner_deletes ON pg_vision_backfill_progress FOR DELETE
  USING (@extschema@.pg_vision_owns(relation));
GRANT SELECT, INSERT, UPDATE, DELETE ON pg_vision_backfill_progress TO PUBLIC;


CREATE OR REPLACE PROCEDURE pg_vision_backfill(
    rel regclass,
    image_column name,
    targets text[],
    checksum_column name DEFAULT NULL,
    batch_size int DEFAULT 32,
    notice_every interval DEFAULT '5 seconds',
    max_batches int DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
  cfg record;
  todo text;              -- WHERE clause selecting rows to (re)embed
  i int;
  ctids tid[];
  images bytea[];
  vecs @extschema:vector@.vector[];
  suppressed tid[];
  failed tid[] := '{}';
  bad tid[];              -- this batch's rows that cannot be embedded or updated, to record,
  bad_model text[];       -- with the model, SQLSTATE and message of each
  bad_state text[];
  bad_msg text[];
  done bigint := 0;
  nfailed bigint := 0;
  left_now bigint;
  t0 timestamptz;
  last_notice timestamptz;
  rate double precision;
  st text; msg text;
  one @extschema:vector@.vector;
  total bigint;
  batches int := 0;
BEGIN
  -- A procedure that commits cannot have a SET clause, so each of its transactions pins
  -- search_path itself, first thing (the setting ends with the transaction): the caller's
  -- search_path never decides which function or operator runs. Extension objects are
  -- named with their schema.
  PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
  t0 := clock_timestamp();
  last_notice := t0;
  IF rel IS NULL OR image_column IS NULL OR targets IS NULL OR batch_size IS NULL THEN
    RAISE EXCEPTION 'pg_vision_backfill: rel, image_column, targets and batch_size must not be NULL'
      USING ERRCODE = 'null_value_not_allowed';
  END IF;
  IF batch_size < 1 THEN
    RAISE EXCEPTION 'batch_size must be at least 1' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  -- Same argument checks as the trigger.
  cfg := @extschema@.pg_vision_trigger_config(rel, ARRAY[image_column::text] || targets
                                  || CASE WHEN checksum_column IS NULL THEN '{}'::text[] ELSE ARRAY['checksum=' || checksum_column] END,
                                  'pg_vision_backfill');
  SELECT string_agg(format('%I IS NULL', c), ' OR ') INTO todo FROM unnest(cfg.targets) c;
  IF checksum_column IS NOT NULL THEN
    todo := format('(%s OR %I IS DISTINCT FROM @extschema@.image_checksum(%I))', todo, checksum_column, image_column);
  END IF;
  todo := format('%I IS NOT NULL AND (%s) AND NOT (ctid = ANY ($1))', image_column, todo);
  -- Counted once: with a checksum column, counting hashes every image.
  EXECUTE format('SELECT count(*) FROM %s WHERE %s', rel, todo) INTO total USING failed;

  LOOP
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);  -- a new transaction
    -- The batch's rows stay locked until its COMMIT: none can be deleted (and its ctid
    -- reused by a new row) or changed while its image is being embedded. Rows another
    -- session has locked are left to that session's trigger.
    EXECUTE format('SELECT array_agg(ctid), array_agg(%I) FROM (SELECT ctid, %I FROM %s WHERE %s LIMIT %s FOR UPDATE SKIP LOCKED) b',
                   image_column, image_column, rel, todo, batch_size)
      INTO ctids, images USING failed;
    EXIT WHEN ctids IS NULL;
    IF batches = max_batches THEN
      RAISE NOTICE 'pg_vision_backfill %: stopping after % batches (max_batches); CALL it again to continue', rel, batches;
      RETURN;
    END IF;
    batches := batches + 1;
    bad := '{}'; bad_model := '{}'; bad_state := '{}'; bad_msg := '{}';
    FOR i IN 1 .. array_length(cfg.targets, 1) LOOP
      BEGIN
        vecs := @extschema@.embed_images(cfg.models[i], images);   -- its own inference batch size
      EXCEPTION WHEN OTHERS THEN
        -- One bad image fails the whole batch: redo this batch one image at a time, so
        -- the good ones are stored and the bad ones recorded and skipped.
        vecs := '{}';
        FOR j IN 1 .. array_length(ctids, 1) LOOP
          BEGIN
            one := @extschema@.embed_image(cfg.models[i], images[j]);
          EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
            one := NULL;
            IF NOT ctids[j] = ANY (failed) THEN
              failed := failed || ctids[j];
              bad := bad || ctids[j]; bad_model := bad_model || cfg.models[i];
              bad_state := bad_state || st; bad_msg := bad_msg || msg;
            END IF;
          END;
          vecs := vecs || one;
        END LOOP;
      END;
      -- An UPDATE moves a row to a new ctid: carry the new ones over to the next column and
      -- to the checksum update. Rows that failed in this run are left alone, so their
      -- recorded ctid stays valid and they are not picked up again. A row the UPDATE did
      -- not change (a row-level security policy or a BEFORE trigger suppressed it) is
      -- recorded as failed too, or it would be selected again at every batch.
      EXECUTE format('WITH moved AS (
                        UPDATE %s t SET %I = u.v FROM unnest($1, $2) WITH ORDINALITY AS u(c, v, k)
                         WHERE t.ctid = u.c AND u.v IS NOT NULL AND NOT u.c = ANY ($3)
                        RETURNING u.k, t.ctid AS c)
                      SELECT array_agg(coalesce(moved.c, o.c) ORDER BY o.k),
                             coalesce(array_agg(o.c) FILTER (WHERE moved.k IS NULL AND o.v IS NOT NULL
                                                             AND NOT o.c = ANY ($3)), ''{}'')
                        FROM unnest($1, $2) WITH ORDINALITY AS o(c, v, k) LEFT JOIN moved ON moved.k = o.k',
                     rel, cfg.targets[i])
        INTO ctids, suppressed USING ctids, vecs, failed;
      FOR j IN 1 .. coalesce(array_length(suppressed, 1), 0) LOOP
        failed := failed || suppressed[j];
        bad := bad || suppressed[j]; bad_model := bad_model || cfg.models[i];
        bad_state := bad_state || '42501'::text;
        bad_msg := bad_msg || 'the UPDATE of the embedding did not change the row: a row-level security policy or a BEFORE trigger suppressed it'::text;
      END LOOP;
    END LOOP;
    -- Failed rows were left unchanged, so their ctids still name them.
    FOR j IN 1 .. coalesce(array_length(bad, 1), 0) LOOP
      EXECUTE format('SELECT @extschema@.pg_vision_record_error($1, @extschema@.pg_vision_row_identity($1, r), $2, $3, $4, $5)
                        FROM %s r WHERE ctid = $6', rel)
        USING rel, image_column, bad_model[j], bad_state[j], bad_msg[j], bad[j];
    END LOOP;
    nfailed := nfailed + coalesce(array_length(bad, 1), 0);
    IF checksum_column IS NOT NULL THEN
      EXECUTE format('UPDATE %s t SET %I = @extschema@.image_checksum(%I) WHERE t.ctid = ANY ($1) AND NOT t.ctid = ANY ($2)',
                     rel, checksum_column, image_column) USING ctids, failed;
    END IF;
    done := done + array_length(ctids, 1);
    left_now := greatest(total - done, 0);
    rate := done / greatest(extract(epoch FROM clock_timestamp() - t0), 1e-3);
    INSERT INTO @extschema@.pg_vision_backfill_progress AS p (relation, started, updated, rows_done, rows_failed, rows_left, rows_per_s, eta)
    VALUES (rel, t0, clock_timestamp(), done, nfailed, left_now, rate, make_interval(secs => left_now / greatest(rate, 1e-9)))
    ON CONFLICT (relation) DO UPDATE SET started = excluded.started, updated = excluded.updated, rows_done = excluded.rows_done,
      rows_failed = excluded.rows_failed, rows_left = excluded.rows_left, rows_per_s = excluded.rows_per_s, eta = excluded.eta,
      finished = false;
    COMMIT;
    IF clock_timestamp() - last_notice >= notice_every THEN
      RAISE NOTICE 'pg_vision_backfill %: % rows done, % failed, % left, % rows/s, about % left',
        rel, done, nfailed, left_now, round(rate::numeric, 1), date_trunc('second', make_interval(secs => left_now / greatest(rate, 1e-9)));
      last_notice := clock_timestamp();
    END IF;
  END LOOP;
  UPDATE @extschema@.pg_vision_backfill_progress SET finished = true, updated = clock_timestamp(), rows_left = 0, eta = '0' WHERE relation = rel;
  RAISE NOTICE 'pg_vision_backfill %: finished, % rows embedded, % failed (see pg_vision_errors), % rows/s',
    rel, done - nfailed, nfailed, round((done / greatest(extract(epoch FROM clock_timestamp() - t0), 1e-3))::numeric, 1);
  COMMIT;
END $$;

REVOKE EXECUTE ON FUNCTION pg_vision_warmup(text[]) FROM PUBLIC;

-- Every backend's pid, models and use: monitoring roles only, like pg_stat_activity's
-- details.
REVOKE EXECUTE ON FUNCTION pg_vision_memory(), pg_vision_memory_summary() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pg_vision_memory(), pg_vision_memory_summary() TO pg_monitor;
GRANT SELECT ON pg_vision_memory, pg_vision_memory_summary TO pg_monitor;

-- New: an administrator (superuser, or pg_signal_backend for non-superusers' backends)
-- makes another backend give its models back at its next interrupt check.
CREATE FUNCTION "pg_vision_release_models"(
	"pid" INT /* i32 */
) RETURNS bool /* bool */
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'pg_vision_release_models_wrapper';
