-- pg_vision 0.1.0 -> 0.2.0. Applied by ALTER EXTENSION pg_vision UPDATE; tested by
-- scripts/upgrade_test.sh (an updated 0.1.0 must define the same objects as a new 0.2.0).
\echo Use "ALTER EXTENSION pg_vision UPDATE TO '0.2.0'" to load this file. \quit

-- New: a model's dimension from its manifest alone.
CREATE FUNCTION "pg_vision_model_dim"(
	"model" TEXT /* & str */
) RETURNS INT /* Option < i32 > */
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'pg_vision_model_dim_wrapper';

-- Changed: the trigger's per-row argument check reads one manifest (pg_vision_model_dim)
-- instead of every manifest in the model directory (pg_vision_models()).
-- Parses and checks the trigger's arguments against the table; raises on misconfiguration.
CREATE OR REPLACE FUNCTION pg_vision_trigger_config(
    rel regclass, args text[], caller text,
    OUT image_column name, OUT targets name[], OUT models text[],
    OUT checksum_column name, OUT on_error text, OUT keep_image boolean)
LANGUAGE plpgsql STABLE AS $$
DECLARE
  arg text;
  col name;
  model text;
  coltype text;
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
      SELECT format_type(atttypid, atttypmod) INTO coltype
        FROM pg_attribute WHERE attrelid = rel AND attname = col AND attnum > 0 AND NOT attisdropped;
      IF coltype IS NULL THEN
        RAISE EXCEPTION '% on %: embedding column "%" does not exist', caller, rel, col
          USING ERRCODE = 'undefined_column';
      END IF;
      model_dim := pg_vision_model_dim(model);
      IF model_dim IS NULL THEN
        RAISE EXCEPTION '% on %: unknown model "%" for column "%"', caller, rel, model, col
          USING ERRCODE = 'undefined_object', HINT = 'SELECT * FROM pg_vision_models() lists the models';
      END IF;
      IF coltype NOT IN ('vector', format('vector(%s)', model_dim)) THEN
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


-- Changed: embed_images() runs the model 4 images at a time by default (was 16): on CPU
-- a bigger batch is no faster per image and multiplies the activations in memory.
CREATE OR REPLACE FUNCTION "embed_images"(
	"model" TEXT, /* Option < & str > */
	"images" bytea[], /* :: std :: option :: Option < Array < & [u8] > > */
	"batch_size" INT DEFAULT 4 /* i32 */
) RETURNS vector[] /* :: std :: option :: Option < Vec < Option < Vector > > > */
IMMUTABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'embed_images_wrapper';

-- Changed: the backfill's batch_size is rows per commit only; the inference batch is
-- embed_images()'s own default.
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
  sets text;
  i int;
  ctids tid[];
  images bytea[];
  vecs vector[];
  failed tid[] := '{}';
  done bigint := 0;
  nfailed bigint := 0;
  left_now bigint;
  t0 timestamptz := clock_timestamp();
  last_notice timestamptz := clock_timestamp();
  rate double precision;
  st text; msg text;
  one vector;
  total bigint;
  batches int := 0;
BEGIN
  IF batch_size < 1 THEN
    RAISE EXCEPTION 'batch_size must be at least 1' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  -- Same argument checks as the trigger.
  cfg := pg_vision_trigger_config(rel, ARRAY[image_column::text] || targets
                                  || CASE WHEN checksum_column IS NULL THEN '{}'::text[] ELSE ARRAY['checksum=' || checksum_column] END,
                                  'pg_vision_backfill');
  SELECT string_agg(format('%I IS NULL', c), ' OR ') INTO todo FROM unnest(cfg.targets) c;
  IF checksum_column IS NOT NULL THEN
    todo := format('(%s OR %I IS DISTINCT FROM image_checksum(%I))', todo, checksum_column, image_column);
  END IF;
  todo := format('%I IS NOT NULL AND (%s) AND NOT (ctid = ANY ($1))', image_column, todo);
  -- Counted once: with a checksum column, counting hashes every image.
  EXECUTE format('SELECT count(*) FROM %s WHERE %s', rel, todo) INTO total USING failed;

  LOOP
    EXECUTE format('SELECT array_agg(ctid), array_agg(%I) FROM (SELECT ctid, %I FROM %s WHERE %s LIMIT %s) b',
                   image_column, image_column, rel, todo, batch_size)
      INTO ctids, images USING failed;
    EXIT WHEN ctids IS NULL;
    IF batches = max_batches THEN
      RAISE NOTICE 'pg_vision_backfill %: stopping after % batches (max_batches); CALL it again to continue', rel, batches;
      RETURN;
    END IF;
    batches := batches + 1;
    FOR i IN 1 .. array_length(cfg.targets, 1) LOOP
      BEGIN
        vecs := embed_images(cfg.models[i], images);   -- its own inference batch size
      EXCEPTION WHEN OTHERS THEN
        -- One bad image fails the whole batch: redo this batch one image at a time, so
        -- the good ones are stored and the bad ones recorded and skipped.
        vecs := '{}';
        FOR j IN 1 .. array_length(ctids, 1) LOOP
          BEGIN
            one := embed_image(cfg.models[i], images[j]);
          EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
            one := NULL;
            IF NOT ctids[j] = ANY (failed) THEN
              failed := failed || ctids[j];
              nfailed := nfailed + 1;
              EXECUTE format('INSERT INTO pg_vision_errors (relation, row_identity, image_column, model, sqlstate, message)
                              SELECT $1, pg_vision_row_identity($1, r), $2, $3, $4, $5 FROM %s r WHERE ctid = $6', rel)
                USING rel, image_column, cfg.models[i], st, msg, ctids[j];
            END IF;
          END;
          vecs := vecs || one;
        END LOOP;
      END;
      -- An UPDATE moves a row to a new ctid: carry the new ones over to the next column and
      -- to the checksum update. Rows that failed in this run are left alone, so their
      -- recorded ctid stays valid and they are not picked up again.
      EXECUTE format('WITH moved AS (
                        UPDATE %s t SET %I = u.v FROM unnest($1, $2) WITH ORDINALITY AS u(c, v, k)
                         WHERE t.ctid = u.c AND u.v IS NOT NULL AND NOT u.c = ANY ($3)
                        RETURNING u.k, t.ctid AS c)
                      SELECT array_agg(coalesce(moved.c, o.c) ORDER BY o.k)
                        FROM unnest($1) WITH ORDINALITY AS o(c, k) LEFT JOIN moved ON moved.k = o.k',
                     rel, cfg.targets[i])
        INTO ctids USING ctids, vecs, failed;
    END LOOP;
    IF checksum_column IS NOT NULL THEN
      EXECUTE format('UPDATE %s t SET %I = image_checksum(%I) WHERE t.ctid = ANY ($1) AND NOT t.ctid = ANY ($2)',
                     rel, checksum_column, image_column) USING ctids, failed;
    END IF;
    done := done + array_length(ctids, 1);
    left_now := greatest(total - done, 0);
    rate := done / greatest(extract(epoch FROM clock_timestamp() - t0), 1e-3);
    INSERT INTO pg_vision_backfill_progress AS p (relation, started, updated, rows_done, rows_failed, rows_left, rows_per_s, eta)
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
  UPDATE pg_vision_backfill_progress SET finished = true, updated = clock_timestamp(), rows_left = 0, eta = '0' WHERE relation = rel;
  RAISE NOTICE 'pg_vision_backfill %: finished, % rows embedded, % failed (see pg_vision_errors), % rows/s',
    rel, done - nfailed, nfailed, round((done / greatest(extract(epoch FROM clock_timestamp() - t0), 1e-3))::numeric, 1);
  COMMIT;
END $$;
