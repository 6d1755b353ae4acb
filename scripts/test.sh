#!/usr/bin/env bash
# The test command: makes sure the test broker (tansu) and the build's system libraries are there,
# then runs every test. Extra arguments go to `cargo test` (e.g. a test name filter).
# --no-fail-fast: a failing test binary does not hide the results of the binaries after it (CI sums
# every binary's "test result:" line); the exit status is still non-zero when anything failed.
set -euo pipefail
cd "$(dirname "$0")/.."

tools="${IMCF_TOOLS_DIR:-$HOME/.cache/imcf-tools}"
tansu_version="0.6.0"
# tansu's in-memory storage engine (memory://) is behind its `dynostore` feature.
tansu_root="$tools/tansu-$tansu_version-dynostore"

# rdkafka builds librdkafka from source and links the system's OpenSSL.
if ! pkg-config --exists openssl 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pkg-config libssl-dev >/dev/null
  else
    echo "scripts/test.sh: OpenSSL headers missing: install pkg-config and libssl-dev (Debian) or openssl-devel" >&2
    exit 1
  fi
fi

# tests/seams.rs watches the forwarder's fdatasync calls with strace (what no in-process check can prove).
if ! command -v strace >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace >/dev/null
  else
    echo "scripts/test.sh: strace missing: install it (Debian: apt-get install strace)" >&2
    exit 1
  fi
fi

# The tests start their own brokers from this binary.
if [ -z "${TANSU_BIN:-}" ]; then
  if [ ! -x "$tansu_root/bin/tansu" ] || ! "$tansu_root/bin/tansu" --version 2>/dev/null | grep -q "$tansu_version"; then
    echo "scripts/test.sh: installing tansu $tansu_version into $tansu_root (about 12 minutes, once)" >&2
    cargo install tansu --locked --version "$tansu_version" --features dynostore --root "$tansu_root"
  fi
  TANSU_BIN="$tansu_root/bin/tansu"
fi
export TANSU_BIN

# `failpoints` compiles the fault-injection seams (src/seam.rs) into the binary under test; tests/seams.rs needs them.
cargo test --locked --no-fail-fast --all-targets --features failpoints "$@"
