#!/usr/bin/env bash
# The project's own PostgreSQL: scripts/pg.sh start|stop|status|psql [args]
# The cluster lives in $STATE/data, owned by `postgres` when run as root, and listens on
# 127.0.0.1 and a socket in $STATE/run, on the first free port from 54320.
# Server options: $PG_VISION_SERVER_OPTS, by default `-c shared_preload_libraries=pg_vision`
# (the cluster-wide memory budget needs it); PG_VISION_SERVER_OPTS= (empty) starts without.
set -euo pipefail
. "$(dirname "$0")/env.sh"

SERVER_OPTS="${PG_VISION_SERVER_OPTS--c shared_preload_libraries=pg_vision}"

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {
  [ -x "$PGBIN/postgres" ] || die "PostgreSQL is not installed yet: run make setup"
  mkdir -p "$PGSOCK"
  [ -n "$RUNAS" ] && chown "$RUNAS" "$PGSOCK" "$STATE"
  if [ ! -s "$PGDATA/PG_VERSION" ]; then
    say "initialising the cluster in $PGDATA"
    mkdir -p "$PGDATA"
    [ -n "$RUNAS" ] && chown "$RUNAS" "$PGDATA"
    as_pg "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust --encoding=UTF8 --locale=C >/dev/null
  fi
  if as_pg "$PGBIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
    echo "PostgreSQL is already running on port $(pg_port)"
  else
    port=54320
    while ! port_free $port; do port=$((port + 1)); done
    echo $port > "$PORT_FILE"
    touch "$PGLOG"; [ -n "$RUNAS" ] && chown "$RUNAS" "$PGLOG"
    say "starting PostgreSQL on port $port"
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGLOG" -w -t 60 \
      -o "-p $port -k $PGSOCK -c listen_addresses=127.0.0.1 $SERVER_OPTS" start >/dev/null \
      || { tail -20 "$PGLOG"; die "PostgreSQL did not start (log: $PGLOG)"; }
  fi
  PGDATABASE=postgres pgv_psql -qtAc "SELECT 1 FROM pg_database WHERE datname = 'pg_vision'" | grep -q 1 \
    || PGDATABASE=postgres pgv_psql -qc "CREATE DATABASE pg_vision"
}

stop() {
  if [ -s "$PGDATA/PG_VERSION" ] && as_pg "$PGBIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
    echo "PostgreSQL stopped"
  else
    echo "PostgreSQL is not running"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) as_pg "$PGBIN/pg_ctl" -D "$PGDATA" status ;;
  psql) shift; pgv_psql "$@" ;;
  *) echo "usage: $0 start|stop|restart|status|psql [psql args]"; exit 2 ;;
esac
