# Sourced by the scripts: the pinned toolchain with its wasm32-wasip2 target, rustfmt and clippy,
# and one target directory outside the clone, so that a later run (or CI on the same machine)
# reuses the last build while a fresh machine still builds from nothing.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/slipway/target}"
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 \
  || ! rustup component list --installed 2>/dev/null | grep -q '^clippy' \
  || ! rustup component list --installed 2>/dev/null | grep -q '^rustfmt'; then
  # Installs the toolchain that rust-toolchain.toml pins, with its components and targets;
  # rustup does not add a listed target to an already installed toolchain by itself.
  rustup toolchain install >&2
fi
