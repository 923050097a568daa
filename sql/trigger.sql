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
--       'keep_image=true');                        -- false: store NULL instead of the bytes
--
-- on_error=reject: a bad image rejects the row with an ERROR naming the row and model.
-- on_error=null:   the row is stored with NULL embeddings, a WARNING is raised and the
--                  failure is recorded in pg_vision_errors for a later retry.
-- On UPDATE the embeddings are recomputed only when the image bytes changed.

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
ALTER TABLE pg_vision_errors ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_reads ON pg_vision_errors FOR SELECT
  USING (@extschema@.pg_vision_owns(relation));
CREATE POLICY owner_deletes ON pg_vision_errors FOR DELETE
  USING (@extschema@.pg_vision_owns(relation));
CREATE POLICY writer_records ON pg_vision_errors FOR INSERT
  WITH CHECK (pg_catalog.has_table_privilege(relation, 'INSERT, UPDATE') AND at = pg_catalog.now());
GRANT SELECT, INSERT, DELETE ON pg_vision_errors TO PUBLIC;
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
COMMENT ON FUNCTION pg_vision_embed_trigger() IS
  'BEFORE INSERT OR UPDATE OF <image> trigger: fills <vector column>:<model> embeddings and checksum=<column> from the image';
