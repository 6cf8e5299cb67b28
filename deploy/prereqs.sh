#!/usr/bin/env bash
# Installs what the demo and the tests need on a Debian machine, when missing:
# PostgreSQL 15 server binaries (initdb, pg_ctl, pg_dump, pg_restore) and HAProxy.
# Safe to run again: it only installs what is absent.
set -euo pipefail

need=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15 postgresql-client-15)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi

echo "installing: ${need[*]}" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "need root or sudo to install ${need[*]}" >&2; exit 64; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# --no-install-recommends: we only need the binaries, not a running cluster.
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian's postgresql package may start a cluster of its own; the tests never use it.
