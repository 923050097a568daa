#!/usr/bin/env bash
# The demo's search page (scripts/demo_web.py) over the demo catalogue, on localhost until
# Ctrl-C: starts the project's PostgreSQL, loads the catalogue first if `make demo` has not
# (scripts/shop_demo.py), then serves, connected as the application role pgv_app.
# Usage: scripts/demo_web.sh [demo_web.py options, e.g. --port 9000]     (make demo-web)
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$REPO"
"$REPO/scripts/pg.sh" start >/dev/null
ready() {
  # The catalogue, its text vectors' table and the role's grants are made together by shop_demo.py.
  [ "$(pgv_psql -qtAc "SELECT to_regclass('public.product_image_text_vectors') IS NOT NULL")" = t ] &&
    [ "$(pgv_psql -qtAc "SELECT count(*) > 0 FROM products")" = t ]
}
ready || "$PY" scripts/shop_demo.py
exec "$PY" scripts/demo_web.py "$@"
