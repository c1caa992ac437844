#!/bin/sh
# Installs (if needed) and starts moto's S3-compatible server on loopback for the
# hearth-snapshot S3 tests, then prints the variable the tests read:
#   eval "$(crates/hearth-snapshot/scripts/s3-test-server.sh)"   # PORT defaults to 5123
#   cargo test -p hearth-snapshot
set -eu
PORT="${PORT:-5123}"
if ! command -v moto_server >/dev/null 2>&1; then
    python3 -m pip install --quiet 'moto[server]' >&2
fi
moto_server -H 127.0.0.1 -p "$PORT" >/tmp/moto-"$PORT".log 2>&1 &
echo "moto_server pid $! (log /tmp/moto-$PORT.log)" >&2
i=0
until python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $PORT), 1)" 2>/dev/null; do
    i=$((i + 1))
    [ "$i" -lt 100 ] || { echo "moto_server did not start" >&2; exit 1; }
    sleep 0.2
done
echo "export HEARTH_TEST_S3=http://127.0.0.1:$PORT"
