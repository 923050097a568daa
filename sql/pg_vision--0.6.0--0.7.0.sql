-- pg_vision 0.6.0 -> 0.7.0

-- Changed: pg_vision_fetch_image wants the secret the background worker gives its batch
-- (src/indexer.rs), so that a table owner's code running inside the batch (its triggers,
-- policies) cannot fetch a URL of its choosing and read the answer. A new C symbol: the
-- library keeps 0.6.0's one-argument symbol (always refusing) for databases not yet updated.
DROP FUNCTION pg_vision_fetch_image(text);
CREATE  FUNCTION "pg_vision_fetch_image"(
	"url" TEXT,
	"token" bigint
) RETURNS bytea
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_vision_fetch_image_for_batch_wrapper';

-- New: the retry delay, one rule for the batch function and the workers.
-- How long until a row (or a table's whole batch) whose failure may pass is tried again,
-- after `attempts` tries so far: 2, 4, 8 ... seconds, at most an hour (the exponent is
-- capped, so no count of attempts overflows it).
CREATE FUNCTION pg_vision_retry_delay(attempts int) RETURNS interval
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN least(make_interval(secs => 2 ^ least(greatest(attempts, 0) + 1, 12)), interval '1 hour');

-- Changed: the batch passes that secret on; without an image the checksum column is written
-- NULL (never a value from the queue row's key); the retry backoff cannot overflow.
DROP FUNCTION pg_vision_index_batch(regclass, int, int);
-- One batch of one table's queue, run by a worker as the table's owner. Returns what it
-- did: claimed queue rows, rows embedded, rows failed for good (in pg_vision_errors), rows
-- put back to retry later. Rows of other workers' batches are skipped, never waited for.
-- fetch_token: the worker's secret for this batch, which pg_vision_fetch_image wants (the
-- owner's code that runs inside the batch does not have it); without it no URL is fetched.
CREATE FUNCTION pg_vision_index_batch(rel regclass, batch_size int, max_attempts int, fetch_token bigint DEFAULT 0,
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
        images[j] := @extschema@.pg_vision_fetch_image(urls[j], fetch_token);
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
    IF cfg.checksum_column IS NOT NULL THEN
      -- NULL without an image: every column written comes from here, never from the key
      -- (a queue row's key may carry other columns than the primary key's).
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
             next_try = now() + @extschema@.pg_vision_retry_delay(attempts),
             last_error = err_state[j] || ': ' || err_msg[j]
       WHERE id = ANY (ids) AND row_key = found_keys[j];
    END IF;
  END LOOP;
  -- Done: written, failed for good, or gone from the table.
  DELETE FROM @extschema@.pg_vision_queue
   WHERE id = ANY (ids) AND (row_key = ANY (done_keys) OR NOT row_key = ANY (coalesce(found_keys, '{}')));
END $$;

-- Changed: ordinary roles insert queue and error rows naming only the columns that describe
-- them (an id chosen ahead of the sequence made other roles' next rows, and so their
-- writes, fail), and change only a queue row's retry state.
REVOKE INSERT, UPDATE ON pg_vision_queue FROM PUBLIC;
GRANT INSERT (relation, trigger_name, row_key), UPDATE (attempts, next_try, last_error) ON pg_vision_queue TO PUBLIC;
REVOKE INSERT ON pg_vision_errors FROM PUBLIC;
GRANT INSERT (relation, row_identity, image_column, model, sqlstate, message) ON pg_vision_errors TO PUBLIC;

-- Changed: column privileges count as writing a table (a role granted UPDATE (image) could
-- not update an image of an async-indexed table: its queue row was refused).
CREATE OR REPLACE FUNCTION pg_vision_may_write(rel regclass) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
  SELECT pg_catalog.has_any_column_privilege(rel, 'INSERT, UPDATE')
      OR coalesce((SELECT pg_catalog.bool_or(pg_catalog.has_any_column_privilege(a.relid, 'INSERT, UPDATE'))
                     FROM pg_catalog.pg_partition_ancestors(rel) a), false);
END;

-- pg_vision_models() gains text_tower: whether the model embeds text too (embed_text).
-- Appended last, as every new result column of a C function must be: a database still at
-- an older version calls the same C symbol with its older, shorter column list, which is
-- only safe while that list is a prefix of what the library returns
-- (scripts/check_c_functions.py checks it against every released install script).
-- A function's result columns cannot change in place: dropped and created again, with the
-- same privileges (PUBLIC may call it, as before).
DROP FUNCTION pg_vision_models();
CREATE  FUNCTION "pg_vision_models"() RETURNS TABLE (
	"name" TEXT,  /* String */
	"dim" INT,  /* i32 */
	"input_size" TEXT,  /* String */
	"onnx_file" TEXT,  /* String */
	"available" bool,  /* bool */
	"loaded" bool,  /* bool */
	"problem" TEXT,  /* Option < String > */
	"description" TEXT,  /* String */
	"text_tower" bool  /* bool */
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'pg_vision_models_wrapper';
