#!/usr/bin/env bash
# Installs what the browser tests need, only what is missing: Chromium from Debian's
# packages and the Node packages of tests/browser from its lockfile (playwright-core, and
# axe-core for the accessibility scans). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
  echo "installing Chromium"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi

if [ ! -d tests/browser/node_modules ] \
  || [ tests/browser/package-lock.json -nt tests/browser/node_modules ]; then
  echo "installing the browser test packages"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
  touch tests/browser/node_modules
fi
