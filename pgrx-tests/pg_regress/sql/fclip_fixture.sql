-- Fashion-CLIP's path through SQL on its architecture with RANDOM weights: fclip_fixture is
-- Fashion-CLIP's configuration (ViT-B/32, 12-layer text tower) with random weights, exported
-- by the project's exporter (scripts/fclip_fixture.sh) and installed with Fashion-CLIP's
-- manifest recipe. Its vectors mean nothing: this checks shapes, unit length, the trigger,
-- a text-to-image query on an HNSW index and batches. Parity with transformers:
-- pgrx-tests/python/test_fclip_parity.py.
\getenv helpers PGV_REGRESS_HELPERS
\i :helpers
CREATE TEMP TABLE photo AS
  SELECT row_number() OVER (ORDER BY n) AS id, n AS name, pg_read_binary_file(:'testdata' || '/' || n) AS img
    FROM unnest(ARRAY['chelsea.png', 'coffee.png', 'rocket.jpg', 'rotated_exif6.jpg', 'cmyk.jpg', 'cutout.png',
                      'animated.gif', 'big_3072x2304.jpg']) n;

SELECT name, dim, input_size, available, pg_vision_model_dim(name) AS model_dim
  FROM pg_vision_models() WHERE name = 'fclip_fixture';

-- one image, one unit vector of 512 dimensions, whatever the format
SELECT name, vector_dims(embed_image('fclip_fixture', img)) AS dims,
       round(vector_norm(embed_image('fclip_fixture', img))::numeric, 5) AS norm
  FROM photo ORDER BY id;

-- text: same space, unit length; CLIP's clean-up (case, spaces) applies, words matter
SELECT vector_dims(embed_text('fclip_fixture', 'red summer dress')) AS dims,
       round(vector_norm(embed_text('fclip_fixture', 'red summer dress'))::numeric, 5) AS norm,
       embed_text('fclip_fixture', 'Red  Summer  Dress') = embed_text('fclip_fixture', 'red summer dress') AS case_and_space,
       embed_text('fclip_fixture', 'red summer dress') = embed_text('fclip_fixture', 'navy wool coat') AS different_words,
       vector_dims(embed_text('fclip_fixture', repeat('écru linen blazer ', 40))) AS truncated_dims;

-- the trigger fills a vector(512) column on INSERT and UPDATE OF image
CREATE TABLE catalogue (id int PRIMARY KEY, image bytea, emb vector(512));
ALTER TABLE catalogue ALTER COLUMN emb SET STORAGE PLAIN;
CREATE TRIGGER embed BEFORE INSERT OR UPDATE OF image ON catalogue
  FOR EACH ROW EXECUTE FUNCTION pg_vision_embed_trigger('image', 'emb:fclip_fixture');
INSERT INTO catalogue SELECT id, img FROM photo;
INSERT INTO catalogue (id, image) VALUES (100, NULL);
SELECT count(*) AS rows, count(emb) AS embedded,
       bool_and(emb = embed_image('fclip_fixture', image)) AS same_as_function
  FROM catalogue;
UPDATE catalogue SET image = (SELECT img FROM photo WHERE name = 'coffee.png') WHERE id = 100;
SELECT emb = (SELECT c.emb FROM catalogue c JOIN photo p USING (id) WHERE p.name = 'coffee.png') AS updated_like_coffee
  FROM catalogue WHERE id = 100;
DELETE FROM catalogue WHERE id = 100;

-- text to image on an HNSW index: the index answers, in the exact order of a full scan
CREATE INDEX ON catalogue USING hnsw (emb vector_cosine_ops);
SET enable_seqscan = off;
SELECT pg_temp.plan($$SELECT id FROM catalogue ORDER BY emb <=> embed_text('fclip_fixture', 'red summer dress') LIMIT 5$$);
CREATE TEMP TABLE by_index AS
  SELECT array_agg(id) AS ids FROM (
    SELECT id FROM catalogue ORDER BY emb <=> embed_text('fclip_fixture', 'red summer dress') LIMIT 5) t;
RESET enable_seqscan;
SET enable_indexscan = off;
SELECT cardinality(ids) AS ranked,
       ids = (SELECT array_agg(id) FROM (
                SELECT id FROM catalogue ORDER BY emb <=> embed_text('fclip_fixture', 'red summer dress') LIMIT 5) t)
         AS same_as_full_scan
  FROM by_index;
RESET enable_indexscan;

-- batches equal single calls (batched kernels may differ in the last bits), for every batch
-- size; NULL elements stay NULL at their positions
WITH batch AS (SELECT b, embed_images('fclip_fixture', array_agg(img ORDER BY id) || NULL::bytea, batch_size => b) AS v
                 FROM photo, unnest(ARRAY[1, 3, 4, 8]) b GROUP BY b)
SELECT b, cardinality(v) AS n, v[cardinality(v)] IS NULL AS last_null,
       bool_and(v[p.id] <=> embed_image('fclip_fixture', p.img) < 1e-5) AS equal_to_single
  FROM batch, photo p GROUP BY b, v ORDER BY b;
DROP TABLE catalogue;
