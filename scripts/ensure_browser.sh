#!/usr/bin/env bash
# Makes sure Debian's chromium and chromium-driver are there for the dashboard's browser test
# (tests/ui/test_dashboard_browser.py). `make test` runs this first.
#
#   present                  -> nothing to do
#   missing, root + apt-get  -> apt-get install chromium chromium-driver
#   missing otherwise        -> one line on stderr says what to install; the browser tests then skip
#   still missing, CI=true   -> exit 1: in CI a missing browser is a failure, never a skip
set -uo pipefail

HINT="the dashboard's browser test needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver"

have_browser() {
    command -v chromium >/dev/null 2>&1 \
        && { command -v chromedriver >/dev/null 2>&1 || [ -x /usr/lib/chromium/chromedriver ]; }
}

have_browser && exit 0

if [ "${EUID}" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing chromium and chromium-driver (apt-get) for the dashboard's browser test"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1; then
        # A fresh machine may have no package lists yet.
        apt-get update -qq >/dev/null 2>&1
        apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1
    fi
    have_browser && exit 0
    echo "sessiond: apt-get could not install them; ${HINT}" >&2
else
    echo "sessiond: ${HINT} (as root; the browser tests skip until then)" >&2
fi

[ "${CI:-}" = "true" ] && exit 1
exit 0
