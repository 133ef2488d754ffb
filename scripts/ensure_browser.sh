#!/usr/bin/env bash
# Makes sure Debian's chromium and chromium-driver are there for the dashboard's browser test
# (tests/ui/test_dashboard_browser.py). `make test` runs this first; see ensure_debian_packages.sh
# for what happens when they are missing (installed when root, else one line; CI=true fails).
exec bash "$(dirname "$0")/ensure_debian_packages.sh" "the dashboard's browser test" \
    'command -v chromium && { command -v chromedriver || [ -x /usr/lib/chromium/chromedriver ]; }' \
    chromium chromium-driver
