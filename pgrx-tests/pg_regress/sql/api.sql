-- The SQL API: functions, NULL handling, real-photo facts, volatility.
\getenv helpers PGV_REGRESS_HELPERS
\i :helpers
\set coffee :testdata '/coffee.png'
\set rocket :testdata '/rocket.jpg'
CREATE TEMP TABLE photo AS
  SELECT 'chelsea' AS name, pg_read_binary_file(:'chelsea') AS img
  UNION ALL SELECT 'coffee', pg_read_binary_file(:'coffee')
  UNION ALL SELECT 'rocket', pg_read_binary_file(:'rocket');

-- installed models
SELECT name, dim, input_size, text_tower, available, loaded FROM pg_vision_models() ORDER BY name;

-- dimensions, from the generic and the per-model functions
SELECT name, vector_dims(embed_efficientnet(img)) AS effnet, vector_dims(embed_image('efficientnet_lite2', img)) AS lite2
  FROM photo ORDER BY name;

-- the per-model wrapper is the generic function, and embeddings are deterministic
SELECT name, embed_efficientnet(img) = embed_image('efficientnet', img) AS same,
       embed_efficientnet(img) <=> embed_efficientnet(img) AS self_distance
  FROM photo ORDER BY name;

-- different photos are far apart, and chelsea is its own nearest neighbour
SELECT a.name, b.name, round((embed_efficientnet(a.img) <=> embed_efficientnet(b.img))::numeric, 1) > 0.2 AS far
  FROM photo a JOIN photo b ON a.name < b.name ORDER BY 1, 2;

-- the ImageNet classifier head: a cat class (281-285) in chelsea's top 3, espresso (967) first for coffee
CREATE FUNCTION pg_temp.top_classes(model text, img bytea, k int) RETURNS int[] LANGUAGE sql AS $$
  SELECT array_agg(i - 1 ORDER BY score DESC)
    FROM (SELECT i, score FROM unnest(embed_image_output(model, img, 'logits')) WITH ORDINALITY AS t(score, i)
           ORDER BY score DESC LIMIT k) top $$;
SELECT name, m, (pg_temp.top_classes(m, img, 3) && ARRAY[281,282,283,284,285]) AS cat_in_top3,
       (pg_temp.top_classes(m, img, 1))[1] AS top1
  FROM photo, unnest(ARRAY['efficientnet', 'efficientnet_lite2']) AS m
 WHERE name IN ('chelsea', 'coffee') ORDER BY name, m;
SELECT array_length(embed_image_output('efficientnet', img, 'logits'), 1) FROM photo WHERE name = 'coffee';

-- a channels-last (NHWC), BGR, mean-subtracted model with real weights: OpenNSFW; its
-- 'nsfw' output is [safe, unsafe] probabilities, and these photos are safe
SELECT name, vector_dims(embed_image('opennsfw', img)) AS dim,
       round((SELECT sum(p) FROM unnest(embed_image_output('opennsfw', img, 'nsfw')) p)::numeric, 4) AS total,
       (embed_image_output('opennsfw', img, 'nsfw'))[2] < 0.2 AS safe
  FROM photo ORDER BY name;

-- a model's dimension from its manifest (the trigger checks its columns with it)
SELECT pg_vision_model_dim('efficientnet') AS effnet, pg_vision_model_dim('opennsfw') AS nsfw,
       pg_vision_model_dim('no_such_model') IS NULL AS unknown_is_null;

-- EfficientNet's embedding is the raw pooled features (not normalised); ReLU6 output is in [0, 6]
SELECT name, round(vector_norm(embed_efficientnet(img))::numeric) > 1 AS not_unit,
       (SELECT min(x) >= 0 AND max(x) <= 6 FROM unnest(embed_efficientnet(img)::real[]) x) AS in_relu6_range
  FROM photo ORDER BY name;

-- NULL in, NULL out
SELECT embed_efficientnet(NULL) IS NULL AS a, embed_image('efficientnet', NULL) IS NULL AS b,
       embed_image(NULL, '\x00') IS NULL AS c, embed_image_output('efficientnet', NULL, 'logits') IS NULL AS d,
       image_checksum(NULL) IS NULL AS e, (SELECT count(*) FROM image_info(NULL)) AS info_rows;

-- image facts without a model
SELECT name, (image_info(img)).* FROM photo ORDER BY name;
-- base64 for JSON clients: plain or as a data: URL, same embedding as the raw bytes
SELECT embed_efficientnet(image_from_base64(encode(img, 'base64'))) = embed_efficientnet(img) AS plain,
       embed_efficientnet(image_from_base64('data:image/png;base64,' || encode(img, 'base64'))) = embed_efficientnet(img) AS data_url
  FROM photo WHERE name = 'chelsea';
SELECT image_checksum(''::bytea) AS empty_sha256, image_checksum('abc'::bytea) AS abc_sha256;

-- volatility and parallel safety, as documented
SELECT proname, provolatile, proparallel, proisstrict FROM pg_proc
 WHERE proname IN ('embed_image', 'embed_efficientnet', 'embed_fclip', 'embed_image_output', 'image_info',
                   'image_checksum', 'pg_vision_models', 'pg_vision_unload')
 ORDER BY proname;

-- IMMUTABLE lets a generated column (and an expression index) embed on insert
CREATE TEMP TABLE product_image (id int, img bytea,
  emb vector(1280) GENERATED ALWAYS AS (embed_efficientnet(img)) STORED);
INSERT INTO product_image SELECT row_number() OVER (ORDER BY name), img FROM photo;
INSERT INTO product_image VALUES (9, NULL);
SELECT id, vector_dims(emb) FROM product_image ORDER BY id;
SELECT p.id FROM product_image p, photo q WHERE q.name = 'coffee' AND p.emb IS NOT NULL
 ORDER BY p.emb <=> embed_efficientnet(q.img) LIMIT 1;

-- the cache: loaded models, calls, unload
SELECT name, calls > 0 AS used, file_bytes > 1000000 AS has_weights FROM pg_vision_loaded_models() ORDER BY name;
SELECT pg_vision_unload('efficientnet_lite2') AS unloaded, pg_vision_unload('never_loaded') AS none;
SELECT name FROM pg_vision_loaded_models() ORDER BY name;
SELECT pg_vision_unload() AS all_unloaded;
