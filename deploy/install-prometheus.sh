#!/bin/sh
# Installs Prometheus (the `prometheus` server and `promtool`) from the distribution's packages
# when either is missing: `make test` checks the alert rules with promtool and runs a real
# Prometheus server against a live worker. Idempotent: returns at once when both are on PATH.
#
# Debian/Ubuntu only (apt-get). As root it runs apt-get directly, otherwise through sudo when
# there is one. The package's own systemd service is NOT started: the tests start their own
# server on a free port with a throwaway storage directory. (invoke-rc.d consults
# /usr/sbin/policy-rc.d; a temporary one that answers 101, "action forbidden", is put in place for
# the install where none exists, and removed afterwards.)
set -eu

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "Prometheus is missing and this is not a Debian-like system: install prometheus and" \
         "promtool (https://prometheus.io/download/) and put them on PATH" >&2
    exit 1
fi

if [ "$(id -u)" = 0 ]; then
    as_root=""
elif command -v sudo >/dev/null 2>&1; then
    as_root="sudo"
else
    echo "Prometheus is missing and installing it needs root: run as root, or install sudo," \
         "or run 'apt-get install prometheus' yourself" >&2
    exit 1
fi

policy=/usr/sbin/policy-rc.d
own_policy=""
if [ ! -e "$policy" ]; then
    $as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
    own_policy=1
fi
cleanup() { if [ -n "$own_policy" ]; then $as_root rm -f "$policy"; fi; }
trap cleanup EXIT

echo "installing Prometheus (Debian package 'prometheus': prometheus, promtool)" >&2
apt_install() {
    $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        prometheus >/dev/null
}
# package lists may be missing (fresh containers) or stale: refresh once and retry
apt_install || { $as_root apt-get update -q >/dev/null && apt_install; }
command -v prometheus >/dev/null && command -v promtool >/dev/null
