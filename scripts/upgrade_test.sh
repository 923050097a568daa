#!/usr/bin/env bash
# Extension upgrade test: every released version, updated with ALTER EXTENSION pg_vision
# UPDATE, must define exactly the objects a fresh CREATE EXTENSION of the current version
# defines, and a trigger created under the old version must keep working.
#
# Released install scripts are kept, exactly as pgrx generated them at their release
# commit, in pgrx-tests/upgrade/pg_vision--<version>.sql; the update scripts
# (sql/pg_vision--<old>--<new>.sql) are installed with the extension.
# Before the updates, scripts/check_c_functions.py checks that this library still serves
# every released version's SQL (the state of a database between a new library and its
# ALTER EXTENSION UPDATE), and each old version's table functions are called once so.
# Usage: scripts/upgrade_test.sh   (the cluster must have the current build installed)
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$REPO"
"$REPO/scripts/pg.sh" start >/dev/null
export PGOPTIONS="-c client_min_messages=warning"
EXTDIR="$("$PG_CONFIG" --sharedir)/extension"
current="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"

# Every extension member with its definition: functions in full, views as queries,
# tables as their columns, plus the tables whose data pg_dump keeps, every member's
# privileges (and its columns'), and the row-level security policies on its tables.
MEMBERS="
SELECT pg_describe_object(d.classid, d.objid, 0) AS object,
       CASE WHEN d.classid = 'pg_proc'::regclass THEN pg_get_functiondef(d.objid)
            WHEN d.classid = 'pg_class'::regclass THEN
              coalesce((SELECT pg_get_viewdef(c.oid) FROM pg_class c WHERE c.oid = d.objid AND c.relkind = 'v'), '') ||
              coalesce((SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)
                          FROM pg_attribute WHERE attrelid = d.objid AND attnum > 0 AND NOT attisdropped), '')
            ELSE '' END AS definition
  FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
 WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e' AND e.extname = 'pg_vision'
UNION ALL
SELECT 'config table ' || c::regclass::text, '' FROM pg_extension e, unnest(e.extconfig) c WHERE e.extname = 'pg_vision'
UNION ALL
SELECT 'privileges on ' || pg_describe_object(d.classid, d.objid, 0),
       coalesce((SELECT proacl::text FROM pg_proc WHERE d.classid = 'pg_proc'::regclass AND oid = d.objid),
                (SELECT relacl::text FROM pg_class WHERE d.classid = 'pg_class'::regclass AND oid = d.objid), '')
  FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
 WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e' AND e.extname = 'pg_vision'
UNION ALL
SELECT 'column privileges on ' || a.attrelid::regclass || '.' || a.attname, a.attacl::text
  FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid JOIN pg_attribute a ON a.attrelid = d.objid
 WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e' AND e.extname = 'pg_vision'
   AND d.classid = 'pg_class'::regclass AND a.attnum > 0 AND a.attacl IS NOT NULL
UNION ALL
SELECT 'policy ' || p.polname || ' on ' || p.polrelid::regclass || ' (row security ' || c.relrowsecurity || ')',
       p.polcmd::text || ' ' || p.polroles::text || ' ' || coalesce(pg_get_expr(p.polqual, p.polrelid), '') || ' ' ||
       coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '')
  FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
 WHERE p.polrelid IN (SELECT objid FROM pg_depend WHERE refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_vision'))
ORDER BY 1"

OUT="$STATE/upgrade"
PHOTO="$("$PY" scripts/photos.py --data-dir)/chelsea.png"
rm -rf "$OUT" && mkdir -p "$OUT"
pgv_psql -q -d postgres -c "DROP DATABASE IF EXISTS pg_vision_upgrade_new" -c "CREATE DATABASE pg_vision_upgrade_new"
PGDATABASE=pg_vision_upgrade_new pgv_psql -q -c "CREATE EXTENSION pg_vision CASCADE"
PGDATABASE=pg_vision_upgrade_new pgv_psql -qAt -c "$MEMBERS" > "$OUT/new.txt"

status=0
"$PY" scripts/check_c_functions.py "$EXTDIR/pg_vision--$current.sql" "$("$PG_CONFIG" --pkglibdir)/pg_vision.so" \
  pgrx-tests/upgrade/pg_vision--*.sql || die "upgrade test failed: C functions"

for script in pgrx-tests/upgrade/pg_vision--*.sql; do
  old="$(basename "$script" .sql)"; old="${old#pg_vision--}"
  install -m 644 "$script" "$EXTDIR/pg_vision--$old.sql"
  db="pg_vision_upgrade_from_${old//./_}"
  pgv_psql -q -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
  PGDATABASE="$db" pgv_psql -q -v ON_ERROR_STOP=1 <<SQL
CREATE EXTENSION vector;
CREATE EXTENSION pg_vision VERSION '$old';
-- a table indexed by the old version's trigger, with one row embedded before the update
CREATE TABLE shop (id int PRIMARY KEY, image bytea, emb vector(1280), checksum text);
CREATE TRIGGER embed BEFORE INSERT OR UPDATE OF image ON shop FOR EACH ROW
  EXECUTE FUNCTION pg_vision_embed_trigger('image', 'emb:efficientnet', 'checksum=checksum');
INSERT INTO shop (id, image) VALUES (1, pg_read_binary_file('$PHOTO'));
-- the old version's table functions, answered by this library (a crash ends the test)
DO \$\$
DECLARE f regprocedure;
BEGIN
  FOR f IN SELECT p.oid FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
            WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_vision')
              AND p.prolang = (SELECT oid FROM pg_language WHERE lanname = 'c') AND p.proretset AND p.pronargs = 0
  LOOP
    EXECUTE format('SELECT count(*) FROM (SELECT * FROM %s) r', f);
  END LOOP;
  -- 0.6.0's one-argument URL fetch: its own symbol, which refuses (no batch secret)
  IF to_regprocedure('pg_vision_fetch_image(text)') IS NOT NULL THEN
    BEGIN
      PERFORM pg_vision_fetch_image('http://images.example.com/a.jpg');
      RAISE EXCEPTION 'pg_vision_fetch_image(text) of an old version answered';
    EXCEPTION WHEN insufficient_privilege THEN NULL;
    END;
  END IF;
END
\$\$;
ALTER EXTENSION pg_vision UPDATE;
INSERT INTO shop (id, image) VALUES (2, pg_read_binary_file('$PHOTO'));
SQL
  result="$(PGDATABASE="$db" pgv_psql -qAt -c "SELECT extversion FROM pg_extension WHERE extname = 'pg_vision'" \
                -c "SELECT count(emb) || ' embedded, same vector: ' || (min(emb::text) = max(emb::text)) FROM shop")"
  PGDATABASE="$db" pgv_psql -qAt -c "$MEMBERS" > "$OUT/from-$old.txt"
  echo "pg_vision $old -> $(echo "$result" | head -1): $(echo "$result" | tail -1)"
  if [ "$(echo "$result" | head -1)" != "$current" ] || [ "$(echo "$result" | tail -1)" != "2 embedded, same vector: true" ]; then
    echo "FAIL: the update from $old did not reach $current, or the old trigger broke"; status=1
  fi
  if diff -u "$OUT/new.txt" "$OUT/from-$old.txt" > "$OUT/from-$old.diff"; then
    echo "  defines the same $(PGDATABASE=pg_vision_upgrade_new pgv_psql -qAt -c "SELECT count(*) FROM ($MEMBERS) m") objects, with the same definitions, as a new $current install"
  else
    echo "FAIL: $old updated to $current differs from a new $current install (- new, + updated):"
    head -60 "$OUT/from-$old.diff"; status=1
  fi
  pgv_psql -q -d postgres -c "DROP DATABASE $db"
done
pgv_psql -q -d postgres -c "DROP DATABASE pg_vision_upgrade_new"
[ $status = 0 ] || die "upgrade test failed ($OUT)"
