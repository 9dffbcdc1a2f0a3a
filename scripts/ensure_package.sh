#!/usr/bin/env bash
# Installs a Debian package when its command is missing: `ensure_package.sh COMMAND PACKAGE`.
# `make test` uses it for prometheus (the monitoring tests run a real one) and chromium (the
# playground's browser test; playwright's own browser downloads cannot work offline).
set -euo pipefail
command="$1"
package="$2"
if command -v "$command" >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "$package"
