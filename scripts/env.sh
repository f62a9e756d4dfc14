# Sourced by the scripts: the pinned toolchain with its wasm32-wasip2 target, rustfmt and clippy,
# and one target directory outside the clone, so that a later run (or CI on the same machine)
# reuses the last build while a fresh machine still builds from nothing.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/slipway/target}"
toolchain=$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)
# Not `grep -q`: it would stop reading early, and under pipefail the listing's SIGPIPE reads as
# "missing".
if ! rustup target list --installed --toolchain "$toolchain" 2>/dev/null | grep -x wasm32-wasip2 >/dev/null \
  || ! rustup component list --installed --toolchain "$toolchain" 2>/dev/null | grep '^clippy' >/dev/null \
  || ! rustup component list --installed --toolchain "$toolchain" 2>/dev/null | grep '^rustfmt' >/dev/null; then
  # Explicit, because rustup does not add rust-toolchain.toml's targets to a toolchain that is
  # already installed, and older rustups take no argument-less `toolchain install`.
  rustup toolchain install "$toolchain" --profile minimal \
    --component rustfmt --component clippy --target wasm32-wasip2 >&2
fi
