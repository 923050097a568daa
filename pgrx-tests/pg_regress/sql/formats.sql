-- Real uploads: EXIF orientation, transparency rules, tiny and extreme images, CMYK, GIF.
\getenv helpers PGV_REGRESS_HELPERS
\i :helpers
CREATE TEMP TABLE f AS
  SELECT n AS name, pg_read_binary_file(:'testdata' || '/' || n) AS img
    FROM unnest(ARRAY['upright.jpg', 'rotated_exif6.jpg', 'cutout.png', 'tiny_1x1.png', 'wide_10000x1.png',
                      'cmyk.jpg', 'animated.gif', 'chelsea.png']) n;
SELECT name, (image_info(img)).* FROM f ORDER BY name;

-- a phone photo stored rotated with an orientation tag embeds like its upright twin
SELECT round((1 - (embed_efficientnet(a.img) <=> embed_efficientnet(b.img)))::numeric, 3) >= 0.998 AS same_picture
  FROM f a, f b WHERE a.name = 'upright.jpg' AND b.name = 'rotated_exif6.jpg';

-- a phone-sized JPEG is decoded at a reduced DCT scale (1/2 here: 2304 / 2 >= 4 x 256), unless
-- pg_vision.jpeg_dct_scaling is off; both give the same picture, not the same bytes
CREATE TEMP TABLE big AS SELECT pg_read_binary_file(:'testdata' || '/big_3072x2304.jpg') AS img;
SHOW pg_vision.jpeg_dct_scaling;
SET pg_vision.jpeg_dct_scaling = off;
CREATE TEMP TABLE big_full AS SELECT embed_efficientnet(img) AS v FROM big;
RESET pg_vision.jpeg_dct_scaling;
SELECT embed_efficientnet(img) = (SELECT v FROM big_full) AS identical,
       round((1 - (embed_efficientnet(img) <=> (SELECT v FROM big_full)))::numeric, 3) >= 0.999 AS same_picture
  FROM big;

-- transparency: "white" (efficientnet's rule) composites onto white, "drop" keeps the stored
-- (black) colour of hidden pixels; the two pictures differ
CREATE TEMP TABLE cutout_default AS SELECT embed_efficientnet(img) AS v FROM f WHERE name = 'cutout.png';
SET pg_vision.model_dir = :'models';
SELECT 1 - (embed_image('effnet_white_alpha', img) <=> embed_image('effnet_drop_alpha', img)) < 0.99 AS rules_differ,
       embed_image('effnet_white_alpha', img) = (SELECT v FROM cutout_default) AS white_is_default
  FROM f WHERE name = 'cutout.png';
RESET pg_vision.model_dir;

-- tiny and extreme aspect ratios embed; a 1x1 image is one flat colour
SELECT name, vector_dims(embed_efficientnet(img)) FROM f WHERE name IN ('tiny_1x1.png', 'wide_10000x1.png') ORDER BY name;

-- CMYK JPEG and the first frame of an animated GIF are close to the RGB original
SELECT name, round((1 - (embed_efficientnet(img) <=> (SELECT embed_efficientnet(img) FROM f WHERE name = 'chelsea.png')))::numeric, 2) >= 0.95 AS like_original
  FROM f WHERE name IN ('cmyk.jpg', 'animated.gif') ORDER BY name;
