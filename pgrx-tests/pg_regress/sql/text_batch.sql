-- Text embedding (CLIP contract) and batch embedding.
-- clip_fixture is a FIXTURE WITH RANDOM WEIGHTS: it proves shapes, tokenisation and
-- normalisation, not meaning. No real CLIP weights can be had without internet.
\getenv helpers PGV_REGRESS_HELPERS
\i :helpers
CREATE TEMP TABLE photo AS
  SELECT n AS name, pg_read_binary_file(:'testdata' || '/' || n) AS img
    FROM unnest(ARRAY['chelsea.png', 'coffee.png', 'rocket.jpg']) n;

-- text and image vectors of a CLIP model share a dimension and are unit length
SELECT vector_dims(embed_text('clip_fixture', 'a photo of a cat')) AS text_dims,
       (SELECT vector_dims(embed_image('clip_fixture', img)) FROM photo WHERE name = 'chelsea.png') AS image_dims,
       round(vector_norm(embed_text('clip_fixture', 'red summer dress'))::numeric, 5) AS text_norm,
       (SELECT round(vector_norm(embed_image('clip_fixture', img))::numeric, 5) FROM photo WHERE name = 'chelsea.png') AS image_norm;

-- CLIP's text cleanup: case and whitespace do not matter, words do
SELECT embed_text('clip_fixture', 'Red  Summer Dress') = embed_text('clip_fixture', 'red summer dress') AS case_and_space,
       embed_text('clip_fixture', 'red summer dress') = embed_text('clip_fixture', 'blue winter coat') AS different_words,
       embed_text('clip_fixture', '') IS NOT NULL AS empty_ok,
       vector_dims(embed_text('clip_fixture', repeat('very long query ', 100))) AS truncated_dims;

-- search images by words: the query runs, ranking all photos
SELECT count(*) FROM (SELECT name FROM photo ORDER BY embed_image('clip_fixture', img) <=> embed_text('clip_fixture', 'espresso')) s;

-- NULL in, NULL out; an image-only model has no text tower; fclip's text weights are not installed here
SELECT embed_text('clip_fixture', NULL) IS NULL AS null_text;
SELECT pg_temp.try($$SELECT embed_text('efficientnet', 'cat')$$);
SELECT pg_temp.try($$SELECT embed_fclip_text('cat')$$);

-- batches: same vectors as one at a time (batched kernels may differ in the last bits),
-- NULL elements stay NULL at their positions
WITH b AS (SELECT embed_images('efficientnet', ARRAY[
             (SELECT img FROM photo WHERE name = 'chelsea.png'), NULL,
             (SELECT img FROM photo WHERE name = 'coffee.png'),
             (SELECT img FROM photo WHERE name = 'rocket.jpg')], batch_size => 2) AS v)
SELECT i, v[i] IS NULL AS is_null,
       (v[i] <=> embed_efficientnet(CASE i WHEN 1 THEN (SELECT img FROM photo WHERE name = 'chelsea.png')
                                           WHEN 3 THEN (SELECT img FROM photo WHERE name = 'coffee.png')
                                           WHEN 4 THEN (SELECT img FROM photo WHERE name = 'rocket.jpg') END)) < 1e-5 AS matches
  FROM b, generate_series(1, 4) i ORDER BY i;
SELECT embed_images('efficientnet', ARRAY[]::bytea[]) AS empty, embed_images('efficientnet', NULL) IS NULL AS null_array;
SELECT pg_typeof(embed_images('efficientnet', ARRAY[(SELECT img FROM photo LIMIT 1)]));
-- one bad image fails the call and is named by its position
SELECT pg_temp.try($$SELECT embed_images('efficientnet', ARRAY[(SELECT img FROM photo LIMIT 1), '\xdeadbeef'::bytea])$$);
SELECT pg_temp.try($$SELECT embed_images('efficientnet', ARRAY[(SELECT img FROM photo LIMIT 1)], batch_size => 0)$$);
