-- The storefront's queries: search by upload (one result per product), filtered by a
-- product attribute, and by text with a CLIP-style model.
\getenv helpers PGV_REGRESS_HELPERS
\i :helpers
CREATE TABLE products (id int PRIMARY KEY, name text, category text);
CREATE TABLE product_images (id serial PRIMARY KEY, product_id int REFERENCES products, image bytea,
                             emb vector(1280), emb_clip vector(512));
CREATE TRIGGER embed BEFORE INSERT OR UPDATE OF image ON product_images FOR EACH ROW
  EXECUTE FUNCTION pg_vision_embed_trigger('image', 'emb:efficientnet', 'emb_clip:clip_fixture');
CREATE INDEX ON product_images USING hnsw (emb vector_cosine_ops);
CREATE INDEX ON product_images USING hnsw (emb_clip vector_cosine_ops);
INSERT INTO products VALUES (1, 'cat poster', 'pets'), (2, 'espresso cup', 'kitchen'), (3, 'rocket model', 'toys');
-- several pictures per product
INSERT INTO product_images (product_id, image)
  SELECT p, pg_read_binary_file(:'testdata' || '/' || f)
    FROM (VALUES (1, 'chelsea.png'), (1, 'cmyk.jpg'), (1, 'animated.gif'), (2, 'coffee.png'),
                 (3, 'rocket.jpg'), (3, 'upright.jpg'), (3, 'rotated_exif6.jpg')) AS v(p, f);
\set upload :testdata '/chelsea.png'

-- one result per product: the best picture of each, best products first
WITH q AS MATERIALIZED (SELECT embed_efficientnet(pg_read_binary_file(:'upload')) AS v),
     hits AS (SELECT product_id, emb <=> (SELECT v FROM q) AS distance
                FROM product_images ORDER BY emb <=> (SELECT v FROM q) LIMIT 50)
SELECT p.name, count(*) AS pictures, round((1 - min(h.distance))::numeric, 2) AS best_similarity
  FROM hits h JOIN products p ON p.id = h.product_id
 GROUP BY p.name ORDER BY min(h.distance);

-- filtered by a product attribute: only toys, even for a cat photo (counted: two of the
-- three toy pictures are near-identical twins, so which two come first is not tested)
WITH q AS MATERIALIZED (SELECT embed_efficientnet(pg_read_binary_file(:'upload')) AS v)
SELECT name, count(*) AS pictures FROM (
  SELECT p.name
    FROM product_images i JOIN products p ON p.id = i.product_id
   WHERE p.category = 'toys'
   ORDER BY i.emb <=> (SELECT v FROM q) LIMIT 2) t
 GROUP BY name;

-- by text with a CLIP-style model (clip_fixture has RANDOM weights: this checks that the
-- query runs on the text/image space and returns ranked rows, not that it understands)
SELECT count(*) AS ranked FROM (
  SELECT id FROM product_images ORDER BY emb_clip <=> embed_text('clip_fixture', 'a cat on a poster') LIMIT 5) t;
SET enable_seqscan = off;
SELECT pg_temp.plan($$SELECT id FROM product_images ORDER BY emb_clip <=> embed_text('clip_fixture', 'a cat on a poster') LIMIT 5$$);
RESET enable_seqscan;
DROP TABLE product_images, products;
