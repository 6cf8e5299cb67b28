#!/usr/bin/env bash
# Fuzzes rollgate's parsers of untrusted bytes with cargo-fuzz (libFuzzer):
#   deploy/fuzz.sh [--seconds N] [--build-only] [TARGET...]
# Targets (fuzz/targets/fuzz_targets/): catalog, inventory, agent_config,
# agent_journal, rollout_journal, archive, ansible_inventory; all by default,
# N seconds each (default 60); --build-only installs cargo-fuzz and builds
# them without a run. Each run starts from the committed seeds (fuzz/corpus/) and
# grows a scratch corpus under target/fuzz-corpus/. A crash stops the script
# with libFuzzer's report; its input is in fuzz/targets/artifacts/<target>/.
# Fix it, then commit the input under fuzz/regressions/<target>/: the test
# suite replays every committed input (fuzz/harness/tests/corpus_replay.rs).
#
# libFuzzer's coverage and AddressSanitizer need a nightly toolchain
# (`cargo +nightly`). Without one the script says so and exits 0 unless
# --require is given: the corpus replay still runs in the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=60
require=0
build_only=0
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="${2:?--seconds needs a number}"; shift 2 ;;
    --require) require=1; shift ;;
    --build-only) build_only=1; shift ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "deploy/fuzz.sh: unknown option $1 (see --help)" >&2; exit 64 ;;
    *) targets+=("$1"); shift ;;
  esac
done
case "$seconds" in ''|*[!0-9]*) echo "deploy/fuzz.sh: --seconds must be a whole number, not '$seconds'" >&2; exit 64 ;; esac
all=(catalog inventory agent_config agent_journal rollout_journal archive ansible_inventory)
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
for t in "${targets[@]}"; do
  [ -f "fuzz/targets/fuzz_targets/$t.rs" ] || { echo "deploy/fuzz.sh: no fuzz target '$t' (targets: ${all[*]})" >&2; exit 64; }
done

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "deploy/fuzz.sh: no nightly Rust toolchain, so no fuzz run (libFuzzer's instrumentation needs cargo +nightly); the committed corpus is replayed by the test suite instead" >&2
  exit $(( require ? 69 : 0 ))
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked --quiet
fi

cd fuzz/targets
cargo +nightly fuzz build --fuzz-dir .
[ "$build_only" -eq 0 ] || { echo "fuzz targets built"; exit 0; }
for t in "${targets[@]}"; do
  scratch="../../target/fuzz-corpus/$t"
  mkdir -p "$scratch"
  echo "fuzzing $t for ${seconds}s" >&2
  # -rss_limit_mb: a parser that allocates without bound is a finding too.
  set +e
  cargo +nightly fuzz run --fuzz-dir . "$t" "$scratch" "../corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 2>&1 |
    grep -aE '^(#[0-9]+[[:space:]]+DONE|==[0-9]+==|SUMMARY|thread .* panicked|Test unit written|.*assertion)'
  status=${PIPESTATUS[0]}
  set -e
  [ "$status" -eq 0 ] || { echo "deploy/fuzz.sh: target $t failed (exit $status); the input is in fuzz/targets/artifacts/$t/" >&2; exit 1; }
done
echo "${#targets[@]} targets fuzzed for ${seconds}s each, no failure"
