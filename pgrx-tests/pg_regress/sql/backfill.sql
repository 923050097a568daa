-- pg_vision_backfill: embeds missing or stale rows in committed batches; resumable.
\getenv helpers PGV_REGRESS_HELPERS
\i :helpers
CREATE TABLE shelf (id int PRIMARY KEY, image bytea, checksum text, emb vector(1280), emb2 vector(1280));
INSERT INTO shelf (id, image)
  SELECT i, pg_read_binary_file(:'testdata' || '/' || n)
    FROM unnest(ARRAY['chelsea.png', 'coffee.png', 'rocket.jpg', 'upright.jpg', 'cmyk.jpg', 'animated.gif']) WITH ORDINALITY AS t(n, i);
INSERT INTO shelf (id, image) VALUES (7, '\xdeadbeef'), (8, NULL);

-- a first run stopped after one batch of 2 (as a cancel would stop it): that batch is committed
CALL pg_vision_backfill('shelf', 'image', ARRAY['emb:efficientnet'], checksum_column => 'checksum',
                        batch_size => 2, max_batches => 1);
SELECT count(emb) AS embedded, count(checksum) AS checksummed FROM shelf;
SELECT relation, rows_done, rows_failed, rows_left, finished FROM pg_vision_backfill_progress;

-- resumed: the rest is done, the broken image is recorded and skipped, NULL images are left alone
SET client_min_messages = warning;
CALL pg_vision_backfill('shelf', 'image', ARRAY['emb:efficientnet'], checksum_column => 'checksum', batch_size => 2);
RESET client_min_messages;
SELECT id, emb IS NOT NULL AS embedded, checksum = image_checksum(image) AS checksum_ok,
       emb = embed_efficientnet(image) AS same_as_single FROM shelf WHERE id <> 7 ORDER BY id;
SELECT relation, row_identity, model, sqlstate FROM pg_vision_errors;
SELECT relation, rows_done, rows_failed, rows_left, finished FROM pg_vision_backfill_progress;

-- stale: an image replaced behind the embeddings' back (no trigger) is found by its checksum
UPDATE shelf SET image = (SELECT image FROM shelf WHERE id = 2) WHERE id = 1;
SELECT emb = (SELECT emb FROM shelf WHERE id = 2) AS fresh_before FROM shelf WHERE id = 1;
SET client_min_messages = warning;
CALL pg_vision_backfill('shelf', 'image', ARRAY['emb:efficientnet', 'emb2:efficientnet_lite2'], checksum_column => 'checksum');
RESET client_min_messages;
SELECT emb = (SELECT emb FROM shelf WHERE id = 2) AS fresh_after FROM shelf WHERE id = 1;
SELECT count(emb2) AS second_model_filled FROM shelf;

-- misuse
SELECT pg_temp.try($$CALL pg_vision_backfill('shelf', 'image', ARRAY['emb:resnet'])$$);
SELECT pg_temp.try($$CALL pg_vision_backfill('shelf', 'image', ARRAY['emb:efficientnet'], batch_size => 0)$$);
DROP TABLE shelf;
DELETE FROM pg_vision_errors;
DELETE FROM pg_vision_backfill_progress;
