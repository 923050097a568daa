#!/usr/bin/env bash
# The main job: start the project's PostgreSQL, embed real photographs with EfficientNet
# inside the database, index them with HNSW and search by an uploaded (edited) photo.
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$REPO"
"$REPO/scripts/pg.sh" start

# The photos the server reads must be readable by its user: copy them into $STATE.
PHOTOS="$STATE/demo-photos"
mkdir -p "$PHOTOS"
"$PY" - "$PHOTOS" <<'PY'
import os, sys, shutil, skimage
from PIL import Image, ImageOps
src, dst = os.path.join(os.path.dirname(skimage.__file__), "data"), sys.argv[1]
names = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg",
         "retina.jpg", "camera.png", "coins.png", "moon.png", "brick.png", "grass.png", "gravel.png", "ihc.png",
         "page.png", "horse.png", "text.png", "color.png", "logo.png", "cell.png"]
for n in names:
    if os.path.exists(os.path.join(src, n)):
        shutil.copy(os.path.join(src, n), dst)
# An "upload": chelsea, mirrored, cropped and re-encoded as JPEG, as a phone app might send it.
im = ImageOps.mirror(Image.open(os.path.join(src, "chelsea.png")).convert("RGB"))
w, h = im.size
im.crop((20, 10, w - 30, h - 15)).save(os.path.join(dst, "upload_chelsea_edited.jpg"), quality=80)
PY
chmod -R a+rX "$PHOTOS"

pgv_psql -v photos="$PHOTOS" <<'SQL'
\pset footer off
CREATE EXTENSION IF NOT EXISTS pg_vision CASCADE;
\echo
\echo '== models installed in pg_vision.model_dir'
SELECT name, dim, input_size, available FROM pg_vision_models() ORDER BY name;

DROP TABLE IF EXISTS demo_photos;
CREATE TABLE demo_photos (
  name      text PRIMARY KEY,
  image     bytea NOT NULL,
  checksum  text GENERATED ALWAYS AS (image_checksum(image)) STORED,
  embedding vector(1280) GENERATED ALWAYS AS (embed_efficientnet(image)) STORED
);
\echo '== embedding the photos inside PostgreSQL (generated column calls embed_efficientnet)'
\timing on
INSERT INTO demo_photos (name, image)
SELECT f, pg_read_binary_file(:'photos' || '/' || f)
  FROM pg_ls_dir(:'photos') AS f WHERE f NOT LIKE 'upload_%';
\timing off
CREATE INDEX ON demo_photos USING hnsw (embedding vector_cosine_ops);
SELECT count(*) AS photos, min(vector_dims(embedding)) AS dims FROM demo_photos;

\echo '== what the ImageNet head of the same model sees (class ids: 281-285 cats, 967 espresso)'
SELECT name, (SELECT array_agg(i - 1 ORDER BY s DESC) FROM (
          SELECT i, s FROM unnest(embed_image_output('efficientnet', image, 'logits')) WITH ORDINALITY t(s, i)
          ORDER BY s DESC LIMIT 3) top) AS top3_classes
  FROM demo_photos WHERE name IN ('chelsea.png', 'coffee.png') ORDER BY name;

\echo '== search by upload: a mirrored, cropped JPEG of chelsea (HNSW index, cosine)'
SET enable_seqscan = off;
\set upload :photos '/upload_chelsea_edited.jpg'
\timing on
SELECT name, round((1 - (embedding <=> q.v))::numeric, 4) AS similarity
  FROM demo_photos, (SELECT embed_efficientnet(pg_read_binary_file(:'upload')) AS v) q
 ORDER BY embedding <=> q.v LIMIT 5;
\timing off
EXPLAIN (COSTS OFF)
SELECT name FROM demo_photos ORDER BY embedding <=> (SELECT embedding FROM demo_photos WHERE name = 'chelsea.png') LIMIT 5;
SQL

cat <<MSG

Done. PostgreSQL is still running with pg_vision installed. Try it yourself:
  scripts/pg.sh psql          (or: $PGBIN/psql -h $PGSOCK -p $(pg_port) -U postgres pg_vision)
  SELECT name, 1 - (embedding <=> embed_efficientnet(pg_read_binary_file('$PHOTOS/coffee.png'))) AS similarity
    FROM demo_photos ORDER BY 2 DESC LIMIT 3;
Stop it with: make stop
MSG
