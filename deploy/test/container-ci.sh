#!/usr/bin/env bash
# Builds deploy/Containerfile with podman and runs `--help` and a tiny `demo --quick` inside.
#
# CI reaches Debian's packages but no container registry, and the build stage's Rust image and
# a cold compile (over ten minutes on 2 cores) are out of reach there. So the base images are
# stand-ins: the runtime base is Debian bookworm made by debootstrap (what debian:bookworm-slim
# is, larger), kept in podman's storage for later runs; the build stage's base is that image with
# a stand-in `cargo` that checks the Containerfile's install command and build context, and
# installs the binary that the workspace build made here. Everything else (the stages, the COPY
# between them, the binary's path, the entry point, the runtime's libraries) is the file's own.
#
# Run by .ci/run as root (apt-get installs podman, runc and debootstrap where missing). crun,
# podman's default runtime on Debian, refuses this machine's hybrid cgroups; runc runs them.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
base=localhost/dexpression-ci-debian:bookworm
image=localhost/dexpression-ci:test
builder=localhost/dexpression-ci-builder:test

say() { echo "container-ci: $*"; }
fail() {
    echo "container-ci: FAILED: $*" >&2
    exit 1
}
if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null; then
    [[ $(id -u) == 0 ]] || fail "podman, runc and debootstrap are missing and installing them needs root"
    say "installing podman, runc and debootstrap (apt-get)"
    apt-get update -qq || fail "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null ||
        fail "apt-get install podman runc debootstrap failed"
fi
# Limits below this machine's: podman's default open-file limit exceeds its hard limit, and runc
# may not set the process limit even to the current one here.
podman=(podman --runtime runc)
limits=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)

work=$(mktemp -d "${TMPDIR:-/tmp}/dexpression-container-ci.XXXXXX")
# The build stages leave untagged images: those that were not there before are this script's.
podman images -q --filter dangling=true | sort >"$work/untagged-before"
finish() {
    local rc=$?
    set +e
    "${podman[@]}" rmi -f "$image" "$builder" >/dev/null 2>&1
    podman images -q --filter dangling=true | sort | comm -13 "$work/untagged-before" - |
        xargs -r podman rmi -f >/dev/null 2>&1
    rm -rf "$work"
    exit "$rc"
}
trap finish EXIT
started=$SECONDS

if ! podman image exists "$base"; then
    say "making $base with debootstrap (kept for later runs; podman rmi $base removes it)"
    debootstrap --variant=minbase bookworm "$work/rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 ||
        { tail -n 20 "$work/debootstrap.log" >&2; fail "debootstrap bookworm failed"; }
    tar -C "$work/rootfs" -c . | podman import --quiet - "$base" >/dev/null || fail "podman import failed"
    rm -rf "$work/rootfs"
fi

say "cargo build -p dexpression-cli --release (the binary the stand-in cargo installs)"
CARGO_TARGET_DIR=$target cargo build --quiet -p dexpression-cli --release || fail "cargo build failed"
commit=$(git describe --always --dirty --abbrev=10)
mkdir -p "$work/builder"
cp "$target/release/dexpression" "$work/builder/dexpression"
cat >"$work/builder/cargo" <<'CARGO'
#!/bin/sh
# Stand-in cargo: the Containerfile's install command and build context, then the prebuilt binary.
set -eu
[ "$*" = "install --locked --path crates/cli --root /opt/dexpression" ] ||
    { echo "stand-in cargo: unexpected command: cargo $*" >&2; exit 1; }
[ -f crates/cli/Cargo.toml ] && [ -f Cargo.lock ] && [ -d vendor ] ||
    { echo "stand-in cargo: the build context lacks the workspace" >&2; exit 1; }
[ ! -e target ] && [ ! -e .git ] ||
    { echo "stand-in cargo: .dockerignore let target/ or .git/ into the build context" >&2; exit 1; }
[ -n "${DEXPRESSION_COMMIT:-}" ] || { echo "stand-in cargo: no DEXPRESSION_COMMIT" >&2; exit 1; }
mkdir -p /opt/dexpression/bin
cp /opt/prebuilt/dexpression /opt/dexpression/bin/dexpression
CARGO
chmod +x "$work/builder/cargo"
printf 'FROM %s\nCOPY dexpression /opt/prebuilt/dexpression\nCOPY cargo /usr/local/bin/cargo\n' "$base" \
    >"$work/builder/Containerfile"
"${podman[@]}" build --quiet "${limits[@]}" -t "$builder" "$work/builder" >/dev/null ||
    fail "building the stand-in builder image failed"

say "podman build -f deploy/Containerfile"
"${podman[@]}" build --quiet "${limits[@]}" -f deploy/Containerfile \
    --build-arg RUST_IMAGE="$builder" --build-arg RUNTIME_IMAGE="$base" \
    --build-arg DEXPRESSION_COMMIT="$commit" -t "$image" . >/dev/null ||
    fail "podman build -f deploy/Containerfile failed"

help=$("${podman[@]}" run --rm "${limits[@]}" --network=none "$image") ||
    fail "the image's default command (--help) failed"
grep -q "^Usage: dexpression" <<<"$help" || fail "the image's --help is not dexpression's: $help"
mkdir -p "$work/demo"
"${podman[@]}" run --rm "${limits[@]}" --network=none -v "$work/demo:/work" "$image" \
    demo --quick --data /work/data --out /work/results --quiet ||
    fail "demo --quick in the image failed"
[[ -f $work/demo/results/quick/summary.md ]] || fail "demo --quick in the image wrote no results/quick/summary.md"
say "the image runs --help and demo --quick ($((SECONDS - started)) s)"
