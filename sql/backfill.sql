-- pg_vision_backfill: (re)embeds the rows of a table whose embeddings are missing or stale,
-- in batches through embed_images() (parallel decode, batched inference), committing per
-- batch so it can be interrupted and resumed. Reports progress with a NOTICE every few
-- seconds and in pg_vision_backfill_progress (visible from other sessions).
--
--   CALL pg_vision_backfill('product_images', 'image',
--          ARRAY['embedding_efficientnet:efficientnet'], checksum_column => 'checksum');
--
-- Missing: an embedding column IS NULL while the image is not. Stale: with a checksum
-- column, the stored checksum differs from the image's SHA-256 (the image changed behind
-- the embeddings' back, e.g. written with the trigger disabled). Rows whose image cannot
-- be embedded are recorded in pg_vision_errors and skipped for the rest of the run.
-- max_batches stops after that many batches (the work done so far stays committed); an
-- interrupted run (cancel, timeout, crash) also keeps its committed batches: CALL again.

CREATE TABLE pg_vision_backfill_progress (
    relation    regclass PRIMARY KEY,
    started     timestamptz NOT NULL,
    updated     timestamptz NOT NULL,
    rows_done   bigint NOT NULL,
    rows_failed bigint NOT NULL,
    rows_left   bigint NOT NULL,
    rows_per_s  double precision,
    eta         interval,
    finished    boolean NOT NULL DEFAULT false
);
COMMENT ON TABLE pg_vision_backfill_progress IS 'progress of pg_vision_backfill(), one row per table, updated at each batch commit';

-- Row-level security, as for pg_vision_errors: a table's progress row is seen by its owner
-- and written (and so also seen) by the roles that may update the table, that is, the
-- roles that can run a backfill on it.
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

CREATE PROCEDURE pg_vision_backfill(
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
