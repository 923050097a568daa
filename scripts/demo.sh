#!/usr/bin/env bash
# The main job: start the project's PostgreSQL, create the ReSys.Shop-shaped schema, load a
# catalogue of real photographs through the indexing trigger, search by upload on the HNSW
# index, and check retrieval with edited copies (scripts/shop_demo.py); then serve the search
# page over that catalogue on localhost (scripts/demo_web.py) until Ctrl-C. PGV_DEMO_WEB=0
# ends after the checks instead (for scripted runs).
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$REPO"
"$REPO/scripts/pg.sh" start
"$PY" scripts/shop_demo.py "$@"
SKIMAGE="$("$PY" scripts/photos.py --data-dir)"
cat <<MSG

Done. PostgreSQL is still running with pg_vision and the demo catalogue. Try it yourself:
  make psql        (or: $PGBIN/psql -h $PGSOCK -p $(pg_port) -U postgres pg_vision)

  SELECT p.name, 1 - (i.embedding_efficientnet <=> q.v) AS similarity
    FROM product_images i JOIN products p ON p.id = i.product_id,
         (SELECT embed_efficientnet(pg_read_binary_file('$SKIMAGE/coffee.png')) AS v) q
   ORDER BY i.embedding_efficientnet <=> q.v LIMIT 5;

Stop PostgreSQL with: make stop
MSG
if [ "${PGV_DEMO_WEB:-1}" != 0 ]; then
  say "the search page: open the URL below, upload a photo or pick one (Ctrl-C stops the page; make demo-web starts it again)"
  exec "$PY" scripts/demo_web.py
fi
