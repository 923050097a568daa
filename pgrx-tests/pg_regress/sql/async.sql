-- The trigger's mode=async: INSERT and UPDATE only queue the row and clear its embeddings;
-- pg_vision_index_batch (what the background workers run, as the table's owner) embeds
-- the queued rows. No worker serves this database, so the queue holds still and the test
-- runs the batches itself (pgrx-tests/python/test_async.py runs the real workers).
\getenv helpers PGV_REGRESS_HELPERS
\i :helpers
CREATE TEMP TABLE photo AS
  SELECT n AS name, pg_read_binary_file(:'testdata' || '/' || n) AS img
    FROM unnest(ARRAY['chelsea.png', 'coffee.png', 'rocket.jpg']) n;

CREATE TABLE queued_items (
  id int PRIMARY KEY,
  image bytea,
  checksum text,
  emb vector(1280)
);
CREATE TRIGGER embed BEFORE INSERT OR UPDATE OF image ON queued_items
  FOR EACH ROW EXECUTE FUNCTION pg_vision_embed_trigger('image', 'emb:efficientnet', 'checksum=checksum', 'mode=async');

-- INSERT queues each row with an image (not the NULL one), by primary key; embeddings and
-- checksum stay NULL until a batch runs, whatever the INSERT wrote into them.
INSERT INTO queued_items (id, image, checksum) SELECT row_number() OVER (ORDER BY name), img, 'stale' FROM photo;
INSERT INTO queued_items (id, image) VALUES (4, NULL);
SELECT relation, trigger_name, row_key, attempts FROM pg_vision_queue ORDER BY id;
SELECT id, emb IS NULL AS emb_null, checksum IS NULL AS checksum_null FROM queued_items ORDER BY id;
SELECT relation, queued, retrying, workers FROM pg_vision_indexing;

-- A batch embeds them, writes the checksum, and empties the queue.
SELECT * FROM pg_vision_index_batch('queued_items', 16, 5);
SELECT id, emb = embed_efficientnet(image) AS same_as_function, checksum = image_checksum(image) AS checksum_ok
  FROM queued_items WHERE image IS NOT NULL ORDER BY id;
SELECT count(*) AS queued FROM pg_vision_queue;
SELECT * FROM pg_vision_index_batch('queued_items', 16, 5);      -- nothing left: claims nothing

-- UPDATE of the image clears the embedding at once (never a stale vector) and queues the
-- row again; an UPDATE with the same bytes, or of another column, queues nothing.
UPDATE queued_items SET image = image WHERE id = 1;
UPDATE queued_items SET image = (SELECT img FROM photo WHERE name = 'rocket.jpg') WHERE id = 1;
SELECT id, emb IS NULL AS emb_null FROM queued_items WHERE id = 1;
SELECT row_key FROM pg_vision_queue;

-- Compare and set: the row changes again after it was queued; the batch embeds the image
-- the row has now, once, however often the row was queued.
UPDATE queued_items SET image = (SELECT img FROM photo WHERE name = 'coffee.png') WHERE id = 1;
SELECT count(*) AS queued_twice FROM pg_vision_queue;
SELECT claimed, embedded FROM pg_vision_index_batch('queued_items', 16, 5);
SELECT emb = (SELECT embed_efficientnet(img) FROM photo WHERE name = 'coffee.png') AS coffee FROM queued_items WHERE id = 1;

-- A row deleted (or truncated) after it was queued is simply done.
UPDATE queued_items SET image = (SELECT img FROM photo WHERE name = 'chelsea.png') WHERE id = 3;
DELETE FROM queued_items WHERE id = 3;
SELECT claimed, embedded, failed FROM pg_vision_index_batch('queued_items', 16, 5);
SELECT count(*) AS queued FROM pg_vision_queue;

-- A bad image fails for good at once (no retry): recorded, embedding NULL, queue empty.
INSERT INTO queued_items (id, image) VALUES (5, '\xdeadbeef');
SELECT claimed, embedded, failed, retried FROM pg_vision_index_batch('queued_items', 16, 5);
SELECT row_identity, image_column, model, sqlstate FROM pg_vision_errors WHERE relation = 'queued_items'::regclass;
SELECT id, emb IS NULL AS emb_null FROM queued_items WHERE id = 5;
SELECT count(*) AS queued FROM pg_vision_queue;

-- waiting inside the transaction that queued rows cannot end: an error says so
BEGIN;
INSERT INTO queued_items (id, image) SELECT 6, img FROM photo WHERE name = 'coffee.png';
SELECT pg_temp.try($$SELECT pg_vision_wait_for_indexing('queued_items', '1 second')$$);
ROLLBACK;
-- nothing queued: returns true at once
SELECT pg_vision_wait_for_indexing('queued_items', '1 second');

-- Configuration errors, at the first row
CREATE TABLE no_key (image bytea, emb vector(1280));
CREATE TRIGGER embed BEFORE INSERT ON no_key
  FOR EACH ROW EXECUTE FUNCTION pg_vision_embed_trigger('image', 'emb:efficientnet', 'mode=async');
SELECT pg_temp.try($$INSERT INTO no_key VALUES ('\x00')$$);
CREATE TABLE url_items (id int PRIMARY KEY, url text, emb vector(1280));
CREATE TRIGGER embed BEFORE INSERT ON url_items
  FOR EACH ROW EXECUTE FUNCTION pg_vision_embed_trigger('url', 'emb:efficientnet');
SELECT pg_temp.try($$INSERT INTO url_items VALUES (1, 'http://example.com/a.jpg')$$);
DROP TRIGGER embed ON url_items;
CREATE TRIGGER embed BEFORE INSERT ON url_items
  FOR EACH ROW EXECUTE FUNCTION pg_vision_embed_trigger('url', 'emb:efficientnet', 'mode=async', 'on_error=reject');
SELECT pg_temp.try($$INSERT INTO url_items VALUES (1, 'http://example.com/a.jpg')$$);
DROP TRIGGER embed ON url_items;
CREATE TRIGGER embed BEFORE INSERT ON url_items
  FOR EACH ROW EXECUTE FUNCTION pg_vision_embed_trigger('url', 'emb:efficientnet', 'mode=later');
SELECT pg_temp.try($$INSERT INTO url_items VALUES (1, 'http://example.com/a.jpg')$$);

-- Only a background worker fetches URLs: a user's batch records the refusal, no fetch.
DROP TRIGGER embed ON url_items;
CREATE TRIGGER embed BEFORE INSERT ON url_items
  FOR EACH ROW EXECUTE FUNCTION pg_vision_embed_trigger('url', 'emb:efficientnet', 'mode=async');
INSERT INTO url_items VALUES (1, 'http://127.0.0.1:9/a.jpg');
SELECT claimed, embedded, failed, retried FROM pg_vision_index_batch('url_items', 16, 1);
SELECT sqlstate, message FROM pg_vision_errors WHERE relation = 'url_items'::regclass;

DROP TABLE queued_items, no_key, url_items;
DELETE FROM pg_vision_errors;
