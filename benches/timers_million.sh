#!/bin/bash
# What waiting timers cost: the timer poller's claim query (src/db/timers.rs)
# on an empty table, with 1,000,000 pending timers none of which is due, and
# with 5,000 of them due — each 5 times, EXPLAIN ANALYZE on a cluster of its
# own (run as root; the server runs as `postgres`). Build first:
#   cargo build --release && benches/timers_million.sh
set -euo pipefail
SB=${SB:-$(pwd)/target/release/switchboard}
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
D=$(mktemp -d /tmp/timers-million.XXXX); chown postgres "$D"
PORT=54391
trap 'su postgres -c "$BIN/pg_ctl -D $D/data -m fast -w stop" >/dev/null 2>&1 || true; rm -rf "$D"' EXIT
su postgres -c "$BIN/initdb -D $D/data -A trust -U postgres >/dev/null"
su postgres -c "$BIN/pg_ctl -D $D/data -o '-p $PORT -k /tmp' -l $D/log -w start >/dev/null"
sql() { psql -h /tmp -p $PORT -U postgres -v ON_ERROR_STOP=1 "$@"; }
sql -qc "CREATE DATABASE sb"
SWITCHBOARD__DATABASE__URL=postgres://postgres@localhost:$PORT/sb "$SB" migrate run >/dev/null
CLAIM="EXPLAIN (ANALYZE, BUFFERS) WITH due AS (SELECT phone, id FROM timers WHERE status = 'pending' AND due_at <= now() AND lease_until < now() ORDER BY due_at LIMIT 1000 FOR UPDATE SKIP LOCKED) UPDATE timers AS t SET leased_by = 1, lease_until = now() + interval '30 s' FROM due WHERE t.phone = due.phone AND t.id = due.id RETURNING t.id"
claim() { for _ in 1 2 3 4 5; do sql sb -Atc "$CLAIM" | grep "Execution Time"; done; }
echo "== empty"; sql sb -qc "ANALYZE timers"; claim
sql sb -qc "INSERT INTO timers (phone, kind, due_at, action, set_version) SELECT '52155' || lpad(g::text, 8, '0'), 'after', now() + (g % 86400) * interval '1 second' + interval '1 hour', '{\"state\": \"x\", \"reply\": \"r\"}', 1 FROM generate_series(1, 1000000) g"
sql sb -qc "VACUUM ANALYZE timers"
echo "== 1,000,000 pending, none due"; claim
sql sb -Atc "SELECT 'due index ' || pg_size_pretty(pg_relation_size('timers_due')) || ', table ' || pg_size_pretty(pg_relation_size('timers'))"
sql sb -qc "UPDATE timers SET due_at = now() - interval '1 s' WHERE id <= 5000"
sql sb -qc "VACUUM ANALYZE timers"
echo "== 1,000,000 pending, 5,000 due (claims of 1,000)"; claim
