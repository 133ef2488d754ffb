#!/usr/bin/env bash
# Makes sure a component `make test` needs is installed, from Debian's packages.
#
#   ensure_debian_packages.sh WHAT CHECK PACKAGE...
#
#   WHAT      what needs them, for the messages ("the cluster tests")
#   CHECK     a shell test that succeeds when the component is there ("command -v etcd")
#
#   present                  -> nothing to do
#   missing, root + apt-get  -> apt-get install PACKAGE... (waiting for another apt run's lock)
#   missing otherwise        -> one line on stderr says what to install; those tests then skip
#   still missing, CI=true   -> exit 1: in CI a missing component is a failure, never a skip
set -uo pipefail

what=$1
check=$2
shift 2
packages=("$@")
hint="for ${what}, install Debian's ${packages[*]}: apt-get install -y ${packages[*]}"

present() { eval "${check}" >/dev/null 2>&1; }

present && exit 0

if [ "${EUID}" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing ${packages[*]} (apt-get) for ${what}"
    export DEBIAN_FRONTEND=noninteractive
    apt_get=(apt-get -o DPkg::Lock::Timeout=300 -y -qq)
    if ! "${apt_get[@]}" install "${packages[@]}" >/dev/null 2>&1; then
        # A fresh machine may have no package lists yet.
        "${apt_get[@]}" update >/dev/null 2>&1
        "${apt_get[@]}" install "${packages[@]}" >/dev/null 2>&1
    fi
    present && exit 0
    echo "sessiond: apt-get could not install them; ${hint}" >&2
else
    echo "sessiond: ${hint} (as root; they skip until then)" >&2
fi

[ "${CI:-}" = "true" ] && exit 1
exit 0
