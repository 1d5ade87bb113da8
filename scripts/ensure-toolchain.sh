#!/usr/bin/env bash
# Gets what `make` builds Candystore with on this machine:
#   Rust: cargo and rustc at least Cargo.toml's rust-version. None -> rustup's
#   installer (https://sh.rustup.rs, the stable toolchain, minimal profile) into
#   ~/.cargo (curl installed with apt-get first where it is missing); an older
#   rustc managed by rustup -> `rustup update stable`; an older rustc of the
#   system's packages -> rustup alongside it (~/.cargo/bin comes first on the
#   Makefile's PATH).
#   A C compiler (cc): the bundled SQLite, zstd and ring compile C. Missing on
#   Debian or Ubuntu -> apt-get install build-essential; elsewhere -> say so, exit 1.
#
#   ensure-toolchain.sh [--plan]
#
# --plan prints the decision for each, one line each, and changes nothing
# (tests/it/setup.rs checks them). For the plan, what the machine has can be given
# instead of read: ENSURE_RUSTC=VERSION|none, ENSURE_RUSTUP=yes|no, ENSURE_CC=yes|no,
# ENSURE_CURL=yes|no, ENSURE_APT=yes|no.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

plan=no
case "${1:-}" in
  --plan) plan=yes ;;
  "") ;;
  *) echo "ensure-toolchain: unknown argument $1 (usage: ensure-toolchain.sh [--plan])" >&2; exit 2 ;;
esac

need="$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' Cargo.toml | head -1)"

rustc_version() {
  if [ -n "${ENSURE_RUSTC+set}" ]; then echo "$ENSURE_RUSTC"; return; fi
  if command -v rustc >/dev/null 2>&1 && command -v cargo >/dev/null 2>&1; then
    rustc --version | awk '{print $2}'
  else
    echo none
  fi
}
yes_or() { # VAR command...
  local var="$1"; shift
  if [ -n "${!var+set}" ]; then [ "${!var}" = yes ]; return; fi
  "$@" >/dev/null 2>&1
}
has_rustup() { yes_or ENSURE_RUSTUP command -v rustup; }
has_cc() { yes_or ENSURE_CC command -v cc; }
has_curl() { yes_or ENSURE_CURL command -v curl; }
has_apt() { yes_or ENSURE_APT command -v apt-get; }
at_least() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" = "$2" ]; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y -q "$@" >/dev/null 2>&1 \
    || { as_root apt-get update -q >/dev/null && as_root apt-get install -y -q "$@" >/dev/null; }
}

have="$(rustc_version)"
if [ "$have" != none ] && at_least "$have" "$need"; then
  rust=ok
elif [ "$have" != none ] && has_rustup; then
  rust=update
else
  rust=install
fi
if has_cc; then cc=ok; elif has_apt; then cc=install; else cc=elsewhere; fi

if [ "$plan" = yes ]; then
  case "$rust" in
    ok) echo "rust: rustc $have (at least $need)" ;;
    update) echo "rust: rustc $have is older than $need: rustup update stable" ;;
    install)
      how="rustup's installer, stable, into ~/.cargo"
      if ! has_curl; then
        if has_apt; then how="curl with apt-get, then $how"; else how="$how (needs curl)"; fi
      fi
      if [ "$have" = none ]; then echo "rust: missing: $how"; else echo "rust: rustc $have is older than $need and not rustup's: $how"; fi
      ;;
  esac
  case "$cc" in
    ok) echo "cc: present" ;;
    install) echo "cc: missing: build-essential with apt-get" ;;
    elsewhere) echo "cc: missing, and no apt-get here: install a C compiler (gcc or clang)" ;;
  esac
  exit 0
fi

case "$cc" in
  install) echo "ensure-toolchain: installing build-essential (apt-get)"; apt_install build-essential ;;
  elsewhere) echo "ensure-toolchain: no C compiler (cc) and no apt-get: install gcc or clang" >&2; exit 1 ;;
esac
case "$rust" in
  update)
    echo "ensure-toolchain: rustc $have is older than $need: rustup update stable"
    rustup update stable
    ;;
  install)
    if ! has_curl; then
      has_apt || { echo "ensure-toolchain: no cargo, no curl, no apt-get: install Rust from https://rustup.rs" >&2; exit 1; }
      apt_install curl ca-certificates
    fi
    echo "ensure-toolchain: installing Rust (rustup, stable) into ~/.cargo"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain stable
    ;;
esac
# clippy and rustfmt for `make test`'s lint (rustup's minimal profile has neither).
if [ "$rust" != ok ] || ! cargo clippy --version >/dev/null 2>&1 || ! cargo fmt --version >/dev/null 2>&1; then
  if command -v rustup >/dev/null 2>&1; then rustup component add clippy rustfmt >/dev/null; fi
fi
