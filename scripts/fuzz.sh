#!/usr/bin/env bash
# Fuzzes the request -> event path (cargo-fuzz, libFuzzer) for a bounded time, seeded from tests/fixtures.
# Exits non-zero when the fuzzer finds a crash, a hang or an out-of-memory; the input is in fuzz/artifacts/.
#
#   IMCF_FUZZ_SECONDS    total fuzzing time (default 60)
#   IMCF_FUZZ_TARGET     fuzz target (default request_to_event)
#   IMCF_FUZZ_SANITIZER  none (default) or address, ...; see below
#   IMCF_FUZZ_JOBS       parallel fuzzing processes (default 1)
#   IMCF_TOOLS_DIR       where cargo-fuzz is installed (default ~/.cache/imcf-tools)
# Extra arguments go to libFuzzer (e.g. -max_len=65536, or an artifact path to reproduce a crash).
set -euo pipefail
cd "$(dirname "$0")/.."

tools="${IMCF_TOOLS_DIR:-$HOME/.cache/imcf-tools}"
target="${IMCF_FUZZ_TARGET:-request_to_event}"
seconds="${IMCF_FUZZ_SECONDS:-60}"
# The fuzzed code is safe Rust, so AddressSanitizer adds little; and cc-rs passes -fsanitize=address on to the
# bundled zstd, which then breaks librdkafka's configure link checks. Panics, overflows (debug assertions are
# on), hangs and OOMs are caught without a sanitizer.
sanitizer="${IMCF_FUZZ_SANITIZER:-none}"
jobs="${IMCF_FUZZ_JOBS:-1}"

export PATH="$tools/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "scripts/fuzz.sh: installing cargo-fuzz into $tools (a few minutes, once)" >&2
  cargo install cargo-fuzz --locked --root "$tools"
fi

# libFuzzer instrumentation needs -Z flags, which the stable toolchain accepts only with RUSTC_BOOTSTRAP=1.
# With a nightly toolchain (IMCF_FUZZ_TOOLCHAIN=nightly) it is not needed but does no harm.
export RUSTC_BOOTSTRAP=1
toolchain=()
if [ -n "${IMCF_FUZZ_TOOLCHAIN:-}" ]; then
  toolchain=("+$IMCF_FUZZ_TOOLCHAIN")
fi

# Seeds: every fixture body behind an unsigned and a signed query (the target's first line is the query).
# The signed one uses the official test vector (token xxxxyyyy, RequestTime 1669872112), which the target
# accepts for app 1400000001 at its fixed clock.
corpus="fuzz/corpus/$target"
mkdir -p "$corpus"
queries=(
  "SdkAppid=1400000000&contenttype=json&ClientIP=10.0.0.1&OptPlatform=iOS"
  "SdkAppid=1400000001&CallbackCommand=Group.CallbackSendMsgException&Sign=17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061&RequestTime=1669872112"
)
for fixture in tests/fixtures/*; do
  [ -f "$fixture" ] || continue
  for i in "${!queries[@]}"; do
    { printf '%s\n' "${queries[$i]}"; cat "$fixture"; } >"$corpus/seed-$i-$(basename "$fixture")"
  done
done

# -timeout: one input taking over 10 s is a hang (a slow-input attack), reported like a crash.
flags=(-max_total_time="$seconds" -timeout=10 -print_final_stats=1)
if [ -f "fuzz/$target.dict" ]; then
  flags+=(-dict="$PWD/fuzz/$target.dict")
fi
# With -jobs, libFuzzer runs that many fuzzing processes, each logging to fuzz-N.log.
if [ "$jobs" -gt 1 ]; then
  flags+=(-jobs="$jobs" -workers="$jobs")
fi

cargo "${toolchain[@]}" fuzz build --sanitizer "$sanitizer" "$target"
echo "scripts/fuzz.sh: fuzzing $target for ${seconds}s ($jobs job(s), sanitizer $sanitizer)" >&2
cargo "${toolchain[@]}" fuzz run --sanitizer "$sanitizer" "$target" "$PWD/$corpus" -- "${flags[@]}" "$@"
