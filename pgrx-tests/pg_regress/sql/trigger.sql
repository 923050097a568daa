-- pg_vision_embed_trigger: embeddings and checksum filled on INSERT / UPDATE OF image.
\getenv helpers PGV_REGRESS_HELPERS
\i :helpers
CREATE TEMP TABLE photo AS
  SELECT n AS name, pg_read_binary_file(:'testdata' || '/' || n) AS img
    FROM unnest(ARRAY['chelsea.png', 'coffee.png', 'rocket.jpg']) n;

CREATE TABLE items (
  id int PRIMARY KEY,
  image bytea,
  checksum text,
  emb vector(1280),
  emb2 vector(1280),
  note text
);
CREATE TRIGGER embed BEFORE INSERT OR UPDATE OF image ON items
  FOR EACH ROW EXECUTE FUNCTION pg_vision_embed_trigger(
    'image', 'emb:efficientnet', 'emb2:efficientnet_lite2', 'checksum=checksum');

-- multi-row INSERT, and a NULL image gives NULL embeddings
INSERT INTO items (id, image) SELECT row_number() OVER (ORDER BY name), img FROM photo;
INSERT INTO items (id, image) VALUES (9, NULL);
SELECT i.id, vector_dims(emb) AS d1, vector_dims(emb2) AS d2, checksum = image_checksum(image) AS checksum_ok,
       emb = embed_efficientnet(image) AS same_as_function
  FROM items i ORDER BY id;

-- UPDATE of another column, or of the image with the same bytes: nothing recomputed
UPDATE items SET note = 'touched' WHERE id = 1;
UPDATE items SET emb2 = NULL WHERE id = 2;                       -- a hand edit ...
UPDATE items SET image = image WHERE id = 2;                     -- ... same bytes: kept as is
SELECT id, emb2 IS NULL AS emb2_still_null FROM items WHERE id = 2;
-- UPDATE with new bytes: recomputed
UPDATE items SET image = (SELECT img FROM photo WHERE name = 'coffee.png') WHERE id = 1;
SELECT id, emb = (SELECT emb FROM items WHERE id = 2) AS now_like_coffee,
       checksum = (SELECT checksum FROM items WHERE id = 2) AS checksum_updated
  FROM items WHERE id = 1;

-- a bad image rejects the row (default on_error=reject), naming the row and the model
SELECT pg_temp.try($$INSERT INTO items (id, image) VALUES (10, '\xdeadbeef')$$);
SELECT count(*) AS rows_with_id_10 FROM items WHERE id = 10;

-- on_error=null: stored without embeddings, WARNING, and a record in pg_vision_errors
CREATE TABLE uploads (id int PRIMARY KEY, image bytea, emb vector(1280));
CREATE TRIGGER embed BEFORE INSERT OR UPDATE OF image ON uploads
  FOR EACH ROW EXECUTE FUNCTION pg_vision_embed_trigger('image', 'emb:efficientnet', 'on_error=null');
\set VERBOSITY terse
INSERT INTO uploads VALUES (1, (SELECT img FROM photo LIMIT 1)), (2, '\xdeadbeef');
\set VERBOSITY default
SELECT id, emb IS NULL AS no_embedding, image IS NOT NULL AS image_kept FROM uploads ORDER BY id;
SELECT relation, row_identity, image_column, model, sqlstate, left(message, 40) AS message FROM pg_vision_errors ORDER BY id;

-- keep_image=false: the bytes are embedded, then not stored
CREATE TABLE slim (id int PRIMARY KEY, image bytea, checksum text, emb vector);
CREATE TRIGGER embed BEFORE INSERT OR UPDATE OF image ON slim
  FOR EACH ROW EXECUTE FUNCTION pg_vision_embed_trigger('image', 'emb:efficientnet', 'checksum=checksum', 'keep_image=false');
INSERT INTO slim SELECT 1, img FROM photo WHERE name = 'chelsea.png';
SELECT id, image IS NULL AS image_dropped, vector_dims(emb), checksum = (SELECT image_checksum(img) FROM photo WHERE name = 'chelsea.png') AS checksum_ok FROM slim;

-- COPY goes through the trigger row by row
CREATE TABLE copied (id int PRIMARY KEY, image bytea, emb vector(1280));
CREATE TRIGGER embed BEFORE INSERT ON copied
  FOR EACH ROW EXECUTE FUNCTION pg_vision_embed_trigger('image', 'emb:efficientnet', 'on_error=null');
\set copyfile :testdata '/copy.txt'
\set VERBOSITY terse
COPY copied (id, image) FROM :'copyfile';
\set VERBOSITY default
SELECT id, vector_dims(emb) FROM copied ORDER BY id;

-- partitioned tables: the trigger on the parent is cloned to every partition
CREATE TABLE catalog (id int, shop text, image bytea, emb vector(1280)) PARTITION BY LIST (shop);
CREATE TABLE catalog_eu PARTITION OF catalog FOR VALUES IN ('eu');
CREATE TABLE catalog_us PARTITION OF catalog FOR VALUES IN ('us');
CREATE TRIGGER embed BEFORE INSERT OR UPDATE OF image ON catalog
  FOR EACH ROW EXECUTE FUNCTION pg_vision_embed_trigger('image', 'emb:efficientnet');
INSERT INTO catalog SELECT row_number() OVER (ORDER BY name), CASE WHEN name = 'coffee.png' THEN 'us' ELSE 'eu' END, img FROM photo;
SELECT tableoid::regclass AS partition, id, vector_dims(emb) FROM catalog ORDER BY id;

-- misconfiguration is an ERROR that says which argument is wrong
CREATE TABLE bad (id int, image bytea, small vector(3), good vector(1280), txt text);
CREATE FUNCTION pg_temp.trigger_with(VARIADIC args text[]) RETURNS text LANGUAGE plpgsql AS $f$
BEGIN
  EXECUTE 'DROP TRIGGER IF EXISTS t ON bad';
  EXECUTE format('CREATE TRIGGER t BEFORE INSERT ON bad FOR EACH ROW EXECUTE FUNCTION pg_vision_embed_trigger(%s)',
                 (SELECT string_agg(quote_literal(a), ', ') FROM unnest(args) a));
  RETURN pg_temp.try($$INSERT INTO bad (id) VALUES (1)$$);
END $f$;
SET client_min_messages = warning;
SELECT pg_temp.trigger_with('image');
RESET client_min_messages;
SELECT pg_temp.trigger_with('picture', 'small:efficientnet');
SELECT pg_temp.trigger_with('txt', 'small:efficientnet');
SELECT pg_temp.trigger_with('image', 'missing:efficientnet');
SELECT pg_temp.trigger_with('image', 'small:efficientnet');
SELECT pg_temp.trigger_with('image', 'small:resnet');
SELECT pg_temp.trigger_with('image', 'good:efficientnet', 'checksum=nope');
SELECT pg_temp.trigger_with('image', 'good:efficientnet', 'on_error=ignore');
SELECT pg_temp.trigger_with('image', 'good:efficientnet', 'whatever');
DROP TRIGGER t ON bad;
CREATE TRIGGER t AFTER INSERT ON bad FOR EACH ROW EXECUTE FUNCTION pg_vision_embed_trigger('image', 'small:efficientnet');
SELECT pg_temp.try($$INSERT INTO bad (id) VALUES (1)$$);

-- the storefront query: top matches for an upload on the HNSW index, vector computed once
-- (rows 1 and 2 both hold coffee.png by now, so only the best match has one right answer)
CREATE INDEX ON items USING hnsw (emb vector_cosine_ops);
SET enable_seqscan = off;
PREPARE search(bytea) AS
  SELECT id, round((1 - (emb <=> embed_efficientnet($1)))::numeric, 3) AS similarity
    FROM items ORDER BY emb <=> embed_efficientnet($1) LIMIT 1;
SELECT '\x' || encode(img, 'hex') AS upload FROM photo WHERE name = 'rocket.jpg' \gset
EXECUTE search(:'upload');
-- the plan: the query vector is computed once (folded to a constant: the function is
-- IMMUTABLE) and the HNSW index supplies the order
SELECT pg_temp.plan(format('EXECUTE search(%L)', :'upload'));
RESET enable_seqscan;
DROP TABLE items, uploads, slim, copied, catalog, bad;
DELETE FROM pg_vision_errors;
