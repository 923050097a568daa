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
-- Only the columns that name a row may be given on INSERT, and only the retry state
-- changed: an id chosen by the inserter (ahead of the sequence) would make every other
-- role's next queued row fail on the primary key.
GRANT SELECT, DELETE ON pg_vision_queue TO PUBLIC;
GRANT INSERT (relation, trigger_name, row_key), UPDATE (attempts, next_try, last_error) ON pg_vision_queue TO PUBLIC;
GRANT USAGE ON SEQUENCE pg_vision_queue_id_seq TO PUBLIC;

-- Whether a failure may go away by itself (retried with backoff) or will not (recorded at
-- once): bad or unsupported images, and images over the limits, stay bad.
CREATE FUNCTION pg_vision_permanent_failure(sqlstate text) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN left(sqlstate, 2) IN ('22', '0A', '54');

-- How long until a row (or a table's whole batch) whose failure may pass is tried again,
-- after `attempts` tries so far: 2, 4, 8 ... seconds, at most an hour (the exponent is
-- capped, so no count of attempts overflows it).
CREATE FUNCTION pg_vision_retry_delay(attempts int) RETURNS interval
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN least(make_interval(secs => 2 ^ least(greatest(attempts, 0) + 1, 12)), interval '1 hour');

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
