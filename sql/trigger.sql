-- pg_vision_embed_trigger(): fills embedding columns (and a checksum) from an image column
-- on INSERT and on UPDATE of the image, so applications just insert rows.
--
--   CREATE TRIGGER embed BEFORE INSERT OR UPDATE OF image ON product_images
--     FOR EACH ROW EXECUTE FUNCTION pg_vision_embed_trigger(
--       'image',                                   -- the image column (bytea)
--       'embedding_efficientnet:efficientnet',     -- <vector column>:<model>, one or more
--       'embedding_fclip:fclip',
--       'checksum=checksum',                       -- optional: SHA-256 hex of the image
--       'on_error=reject',                         -- reject (default) | null
--       'keep_image=true',                         -- false: store NULL instead of the bytes
--       'mode=sync');                              -- sync (default) | async
--
-- on_error=reject: a bad image rejects the row with an ERROR naming the row and model.
-- on_error=null:   the row is stored with NULL embeddings, a WARNING is raised and the
--                  failure is recorded in pg_vision_errors for a later retry.
-- On UPDATE the embeddings are recomputed only when the image bytes changed.
--
-- mode=async (sql/indexing.sql): the trigger only clears the embedding columns and the
-- checksum and queues the row (pg_vision_queue); pg_vision's background workers embed it
-- after the commit. The image column may then also be a URL (text), fetched by the
-- workers from hosts on pg_vision.url_allowlist. Needs a primary key; failures are
-- recorded in pg_vision_errors (on_error=null, the only choice: a committed row cannot be
-- rejected).

CREATE TABLE pg_vision_errors (
    id           bigserial PRIMARY KEY,
    relation     regclass NOT NULL,
    row_identity jsonb NOT NULL,
    image_column name NOT NULL,
    model        text NOT NULL,
    sqlstate     text NOT NULL,
    message      text NOT NULL,
    at           timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE pg_vision_errors IS 'images pg_vision could not embed (trigger with on_error=null, backfill), for retry';
SELECT pg_catalog.pg_extension_config_dump('pg_vision_errors', '');
SELECT pg_catalog.pg_extension_config_dump('pg_vision_errors_id_seq', '');

-- Tenants share this table, so row-level security decides who sees what. A role sees and
-- deletes the error rows of the relations it owns (or is a member of the owner of):
-- SELECT on a table does not grant its error rows. Rows are written by whoever inserts or
-- updates the relation (the trigger and the backfill run as that role); the check runs as
-- that role too, so nobody can file rows against a relation they cannot write. (A
-- SECURITY DEFINER writer could not make that check: inside it, the caller's role is
-- gone.) Rows cannot be changed after they are written.
-- Whether the current role owns `rel` (or is a member of its owner): who sees a relation's
-- rows in pg_vision_errors and pg_vision_backfill_progress.
CREATE FUNCTION pg_vision_owns(rel regclass) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
  SELECT pg_catalog.pg_has_role(c.relowner, 'USAGE') FROM pg_catalog.pg_class c WHERE c.oid = rel;
END;
-- Whether the current role may insert into or update `rel` (the table, or some of its
-- columns: a role granted UPDATE (image) updates images), directly or through a
-- partitioned table above it (a row inserted through the parent is filed under its
-- partition, on which the role may hold no privilege of its own).
CREATE FUNCTION pg_vision_may_write(rel regclass) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
  SELECT pg_catalog.has_any_column_privilege(rel, 'INSERT, UPDATE')
      OR coalesce((SELECT pg_catalog.bool_or(pg_catalog.has_any_column_privilege(a.relid, 'INSERT, UPDATE'))
                     FROM pg_catalog.pg_partition_ancestors(rel) a), false);
END;
ALTER TABLE pg_vision_errors ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_reads ON pg_vision_errors FOR SELECT
  USING (@extschema@.pg_vision_owns(relation));
CREATE POLICY owner_deletes ON pg_vision_errors FOR DELETE
  USING (@extschema@.pg_vision_owns(relation));
CREATE POLICY writer_records ON pg_vision_errors FOR INSERT
  WITH CHECK (@extschema@.pg_vision_may_write(relation) AND at = pg_catalog.now());
-- INSERT of the columns that describe a failure only: an id chosen by the writer (ahead of
-- the sequence) would make other roles' next recorded failures, and so their writes, fail.
GRANT SELECT, DELETE ON pg_vision_errors TO PUBLIC;
GRANT INSERT (relation, row_identity, image_column, model, sqlstate, message) ON pg_vision_errors TO PUBLIC;
GRANT USAGE ON SEQUENCE pg_vision_errors_id_seq TO PUBLIC;

-- Identifies a row for messages and pg_vision_errors: its primary key columns as a JSON
-- object, or {} when the table has no primary key (a BEFORE trigger's row has no ctid yet).
CREATE FUNCTION pg_vision_row_identity(rel regclass, r anyelement) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
  SELECT coalesce(
    (SELECT jsonb_object_agg(a.attname, to_jsonb(r) -> a.attname)
       FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
      WHERE i.indrelid = rel AND i.indisprimary),
    '{}'::jsonb)
$$;

-- Parses and checks the trigger's arguments against the table; raises on misconfiguration.
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

-- Records one failure (see the policies above). One writer for the trigger and the backfill.
CREATE FUNCTION pg_vision_record_error(rel regclass, row_identity jsonb, image_column name, model text,
                                       sqlstate text, message text) RETURNS void
LANGUAGE sql VOLATILE STRICT SET search_path = pg_catalog, pg_temp AS $$
  INSERT INTO @extschema@.pg_vision_errors (relation, row_identity, image_column, model, sqlstate, message)
  VALUES (rel, row_identity, image_column, model, sqlstate, message)
$$;

-- The trigger and everything it calls run with search_path pinned to pg_catalog: the
-- inserting role's search_path (which may list schemas other roles can create in) never
-- decides which function or operator runs. The extension's own objects are named with
-- their schema.
CREATE FUNCTION pg_vision_embed_trigger() RETURNS trigger
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
COMMENT ON FUNCTION pg_vision_embed_trigger() IS
  'BEFORE INSERT OR UPDATE OF <image> trigger: fills <vector column>:<model> embeddings and checksum=<column> from the image';
