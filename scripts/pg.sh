#!/usr/bin/env bash
# A real PostgreSQL for the tests, from Debian's packages.
#
#   bash scripts/pg.sh start   # install if missing, start the cluster, print the URL on stdout
#   bash scripts/pg.sh url     # print the URL (the cluster must be running)
#   bash scripts/pg.sh stop    # stop the cluster
#
# Typical use:  export SPOTD_TEST_PG_URL=$(bash scripts/pg.sh start)
# The URL connects over the unix socket with peer authentication (no password) as a superuser
# role named after the current user; the test fixture creates and drops its own database.
# Progress goes to stderr so that stdout is only the URL.
set -euo pipefail

DB="${SPOTD_PG_DB:-spotd_test}"
USER_NAME="$(id -un)"
SOCKET_DIR=/var/run/postgresql

log() { echo "pg.sh: $*" >&2; }

as_postgres() {
  if [ "$USER_NAME" = postgres ]; then
    "$@"
  elif [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    sudo -n -u postgres -- "$@"
  fi
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n -- "$@"; fi
}

install() {
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    return
  fi
  log "installing postgresql (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y -q postgresql >&2 || {
    as_root apt-get update -q >&2
    as_root apt-get install -y -q postgresql >&2
  }
}

version() {
  # the newest cluster configured under /etc/postgresql, else the newest installed server
  local v
  v=$(ls -1 /etc/postgresql 2>/dev/null | sort -V | tail -n1 || true)
  if [ -z "$v" ]; then
    v=$(ls -1 /usr/lib/postgresql 2>/dev/null | sort -V | tail -n1 || true)
  fi
  [ -n "$v" ] || { log "no PostgreSQL version found under /etc/postgresql or /usr/lib/postgresql"; exit 1; }
  echo "$v"
}

url() {
  echo "postgresql+psycopg://${USER_NAME}@/${DB}?host=${SOCKET_DIR}"
}

start() {
  install
  local v
  v=$(version)
  if [ ! -d "/etc/postgresql/$v/main" ]; then
    log "creating cluster $v/main"
    as_root pg_createcluster "$v" main >&2
  fi
  if ! pg_lsclusters -h 2>/dev/null | awk -v v="$v" '$1==v && $2=="main" {print $4}' | grep -q online; then
    log "starting cluster $v/main"
    as_root pg_ctlcluster "$v" main start >&2
  fi
  for _ in $(seq 1 100); do
    pg_isready -q -h "$SOCKET_DIR" && break
    sleep 0.1
  done
  pg_isready -q -h "$SOCKET_DIR" || { log "PostgreSQL $v did not become ready"; exit 1; }
  if [ "$USER_NAME" != postgres ]; then
    if ! as_postgres psql -h "$SOCKET_DIR" -tAc "select 1 from pg_roles where rolname='${USER_NAME}'" | grep -q 1; then
      log "creating superuser role ${USER_NAME}"
      as_postgres psql -h "$SOCKET_DIR" -q -c "create role \"${USER_NAME}\" superuser login" >&2
    fi
  fi
  if ! as_postgres psql -h "$SOCKET_DIR" -tAc "select 1 from pg_database where datname='${DB}'" | grep -q 1; then
    log "creating database ${DB}"
    as_postgres createdb -h "$SOCKET_DIR" -O "$USER_NAME" "$DB" >&2
  fi
  url
}

stop() {
  command -v pg_ctlcluster >/dev/null 2>&1 || return 0
  local v
  v=$(version)
  as_root pg_ctlcluster "$v" main stop >&2 || true
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  url) url ;;
  *) echo "usage: $0 start|stop|url" >&2; exit 2 ;;
esac
