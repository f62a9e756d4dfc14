# Sourced by the scripts: the pinned toolchain with its targets (wasm32-wasip2 for plugins,
# x86_64-unknown-linux-musl for the static first-boot agent put into guests), rustfmt and clippy,
# and one target directory outside the clone, so that a later run (or CI on the same machine)
# reuses the last build while a fresh machine still builds from nothing.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/slipway/target}"
toolchain=$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)
# Not `grep -q`: it would stop reading early, and under pipefail the listing's SIGPIPE reads as
# "missing".
if ! rustup target list --installed --toolchain "$toolchain" 2>/dev/null | grep -x wasm32-wasip2 >/dev/null \
  || ! rustup target list --installed --toolchain "$toolchain" 2>/dev/null | grep -x x86_64-unknown-linux-musl >/dev/null \
  || ! rustup component list --installed --toolchain "$toolchain" 2>/dev/null | grep '^clippy' >/dev/null \
  || ! rustup component list --installed --toolchain "$toolchain" 2>/dev/null | grep '^rustfmt' >/dev/null; then
  # Explicit, because rustup does not add rust-toolchain.toml's targets to a toolchain that is
  # already installed, and older rustups take no argument-less `toolchain install`.
  rustup toolchain install "$toolchain" --profile minimal \
    --component rustfmt --component clippy --target wasm32-wasip2 --target x86_64-unknown-linux-musl >&2
fi

# Debian packages the server and its tests run: qemu-img (qemu-utils) reads and converts images;
# mkfs.ext4 (e2fsprogs) builds the small file system a disk-full test mounts.
need_packages() {
  local missing=()
  command -v qemu-img >/dev/null || missing+=(qemu-utils)
  command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
  command -v sfdisk >/dev/null || missing+=(fdisk)
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  echo "installing ${missing[*]}" >&2
  "${sudo[@]}" apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >&2
}
need_packages
# QEMU's system emulator, for the deployment tests' real VMs: from bookworm-backports, to match
# qemu-img (see scripts/fixtures/qemu-system).
command -v qemu-system-x86_64 >/dev/null || scripts/fixtures/qemu-system >/dev/null
