#!/usr/bin/env bash
# Starts nginx + nchan on loopback as a WebSocket fanout peer, in the foreground, from
# nginx.conf beside this script: ./start.sh [PORT] [SCRATCH_DIR] [CORE]
#   subscribe: ws://127.0.0.1:PORT/sub    publish: POST http://127.0.0.1:PORT/pub
# `cue-bench compare` does the same itself; this is for trying the peer by hand:
#   cue-bench fanout --target-url ws://127.0.0.1:8090/sub --publish-url http://127.0.0.1:8090/pub
set -euo pipefail
port=${1:-8090}
dir=$(mkdir -p "${2:-/tmp/cue-nchan}" && cd "${2:-/tmp/cue-nchan}" && pwd)
core=${3:-0}
here=$(cd "$(dirname "$0")" && pwd)
test -e /usr/lib/nginx/modules/ngx_nchan_module.so || { echo "nchan not installed: run $here/install.sh" >&2; exit 1; }
mask=$(python3 -c "print(format(1 << $core, 'b'))")
sed -e "s|@PREFIX@|$dir|g" -e "s|@PORT@|$port|g" -e "s|@CPU_MASK@|$mask|g" -e "s|@CONNS@|19500|g" \
    "$here/nginx.conf" > "$dir/nginx.conf"
echo "nginx + nchan on 127.0.0.1:$port (scratch $dir); Ctrl-C stops it" >&2
exec /usr/sbin/nginx -p "$dir" -c "$dir/nginx.conf"
