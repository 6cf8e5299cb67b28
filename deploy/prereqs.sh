#!/usr/bin/env bash
# Installs what the demo and the tests need on a Debian machine, when missing:
# PostgreSQL 15 server binaries (initdb, pg_ctl, pg_dump, pg_restore), HAProxy,
# dpkg-deb, ansible-core, and for the compose install method a running Docker Engine and a
# Compose tool. Safe to run again: it only installs what is absent, and a
# Docker Engine that already runs is used as it is.
set -euo pipefail

need=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15 postgresql-client-15)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v dpkg-deb >/dev/null 2>&1 || need+=(dpkg)
# Docker: only when no engine answers (one may run without Debian's package).
docker_up() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }
if ! docker_up && ! command -v docker >/dev/null 2>&1; then
  need+=(docker.io)
fi
if ! docker compose version >/dev/null 2>&1 && ! docker-compose version >/dev/null 2>&1; then
  need+=(docker-compose)
fi

start_docker() {
  docker_up && return 0
  echo "starting the Docker Engine" >&2
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $sudo systemctl start docker
  elif command -v service >/dev/null 2>&1; then
    $sudo service docker start
  else
    $sudo sh -c 'nohup dockerd >/var/log/dockerd.log 2>&1 &'
  fi
  for _ in $(seq 1 60); do docker_up && return 0; sleep 1; done
  echo "the Docker Engine did not start; see /var/log/dockerd.log or 'service docker status'" >&2
  exit 69
}

# ansible-core, for the agent role's checks (tests/e2e/ansible_role.rs):
# from PyPI into a pip-managed Python, else Debian's package (a system
# Python refuses pip installs).
if ! command -v ansible-playbook >/dev/null 2>&1; then
  if python3 -m pip install -q --disable-pip-version-check ansible-core 2>/dev/null; then
    if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
  fi
  command -v ansible-playbook >/dev/null 2>&1 || need+=(ansible-core)
fi

sudo=""
if [ ${#need[@]} -eq 0 ]; then
  if [ "$(id -u)" -ne 0 ] && ! docker_up; then sudo="sudo"; fi
  start_docker
  exit 0
fi

echo "installing: ${need[*]}" >&2
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "need root or sudo to install ${need[*]}" >&2; exit 64; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# --no-install-recommends: we only need the binaries, not a running cluster.
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian's postgresql package may start a cluster of its own; the tests never use it.
start_docker
