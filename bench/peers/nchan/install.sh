#!/usr/bin/env bash
# Installs nginx with the nchan module from Debian's packages, without starting a system
# service (the bench starts its own nginx on loopback with bench/peers/nchan/nginx.conf).
set -euo pipefail
if [ -e /usr/lib/nginx/modules/ngx_nchan_module.so ] && command -v nginx >/dev/null; then
    exit 0
fi
# Keep the package scripts from starting nginx on port 80.
policy=/usr/sbin/policy-rc.d
created=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    created=1
fi
trap '[ "$created" = 1 ] && rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends nginx-light libnginx-mod-nchan >/dev/null \
    || apt-get install -y -qq --no-install-recommends nginx libnginx-mod-nchan >/dev/null
test -e /usr/lib/nginx/modules/ngx_nchan_module.so
