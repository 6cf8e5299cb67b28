#!/usr/bin/env bash
# The randomized kill -9 matrix: builds what it needs, then runs
#   deploy/chaos.sh --trials N --seed S [--dps N]
# Each trial is a real rollout of a demo fleet (PostgreSQL, HAProxy, a CP
# and DPs) under steady load with one process killed at a random instant;
# the last line printed is "N trials, M consistent". A failing trial prints
# its seed, so `deploy/chaos.sh --seed <seed> --trials 1` replays it.
# What each trial checks: testbed/src/bin/chaos.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/prereqs.sh
cargo build --workspace --locked
exec target/debug/chaos "$@"
