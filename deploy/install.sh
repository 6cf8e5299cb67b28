#!/usr/bin/env bash
# Installs the rollgate agent on a gateway host (run as root on the host):
#   deploy/install.sh [--binary PATH] [--config PATH]
# Copies the agent binary to /usr/local/bin, the systemd unit to
# /etc/systemd/system, and the config (default: deploy/agent.toml, to edit) to
# /etc/rollgate/agent.toml unless one exists; checks the config, then enables
# and starts the service. Certificates come from `rollgate certs init` on the
# coordinator: copy ca.pem, <host>.pem and <host>.key to /etc/rollgate/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
binary="$here/../target/release/rollgate-agent"
config="$here/agent.toml"
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    *) echo "usage: $0 [--binary PATH] [--config PATH]" >&2; exit 64 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 64; }
[ -x "$binary" ] || { echo "no agent binary at $binary (cargo build --release)" >&2; exit 64; }

install -m 0755 "$binary" /usr/local/bin/rollgate-agent
install -d -m 0750 /etc/rollgate
if [ ! -e /etc/rollgate/agent.toml ]; then
  install -m 0640 "$config" /etc/rollgate/agent.toml
  echo "installed /etc/rollgate/agent.toml: edit it, then run this script again" >&2
fi
install -m 0644 "$here/rollgate-agent.service" /etc/systemd/system/rollgate-agent.service
# Refuse to start on a config the agent would reject (exit 64 names the key).
/usr/local/bin/rollgate-agent --check --config /etc/rollgate/agent.toml
systemctl daemon-reload
systemctl enable --now rollgate-agent
systemctl --no-pager status rollgate-agent
