#!/bin/sh
# Node.js and npm run `buf lint` and the Node interop test. When they are missing: install them
# from Debian apt if we are root (as CI is), else say in one line what to install and fail.
# SESSIOND_NO_APT=1 skips the apt attempt (the test of the message sets it).
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    exit 0
fi
if [ -z "${SESSIOND_NO_APT:-}" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing nodejs and npm from Debian apt"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null && exit 0
fi
echo "make test needs Node.js and npm (buf lint, the Node interop test): install them (Debian/Ubuntu: apt-get install nodejs npm), or run 'make test-py' for the Python-only checks" >&2
exit 1
