#!/usr/bin/env bash
# The main job on a fresh Debian machine with the Rust toolchain: installs what
# is missing (PostgreSQL 15 binaries, HAProxy), builds rollgate, its agent and
# the reference gateway, then runs `rollgate demo`: a throwaway fleet (1 CP and
# 3 DPs behind HAProxy, one agent per host) upgraded 3.3.0 → 3.4.0 under steady
# traffic. Arguments are passed to `rollgate demo` (try --help, --keep, and
# --install compose for gateways run as Docker Compose services, --install deb
# for gateways installed from .deb packages).
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/prereqs.sh
cargo build --workspace --locked --quiet
exec target/debug/rollgate demo "$@"
