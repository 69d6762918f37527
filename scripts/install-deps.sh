#!/usr/bin/env bash
# Installs the Debian packages kiln's tests drive (docker, podman, skopeo, a registry, ...).
#
#   scripts/install-deps.sh          install what is missing (as root), or say what is missing
#   scripts/install-deps.sh --check  only report; exit 1 if anything is missing
#   scripts/install-deps.sh --list   print the package list
#
# Idempotent, and fast when everything is present: the only work then is one dpkg-query.
# Without root it cannot install anything, so it prints the command and exits 0; the tests
# then skip (or fail, under KILN_TEST_REQUIRE_ALL=1) where a tool is missing.
set -euo pipefail

# One package per line, with what needs it.
PACKAGES=(
  docker.io          # reference builder/loader: dockerd 20.10, docker CLI with BuildKit
  podman             # second loader/runner of our images
  buildah            # third opinion on OCI images
  skopeo             # inspect/copy images between archives, layouts and registries
  umoci              # unpack/inspect OCI layouts
  oci-image-tool     # validate OCI layouts against the spec
  python3-jsonschema # validate manifests/configs against the OCI JSON schemas
  docker-registry    # a local distribution registry for push/pull tests
  apache2-utils      # htpasswd -B: bcrypt password file for the registry's basic auth
  openssl            # certificate and JWT signatures for the token-auth registry test
  busybox-static     # static /bin/busybox for the test root filesystem
  uidmap             # newuidmap/newgidmap for rootless user namespaces
  pigz               # parallel gzip, to compare against kiln's compression
  xz-utils           # .tar.xz contexts and ADD sources
  zstd               # zstd layers
  bzip2              # .tar.bz2 ADD sources
  ca-certificates    # TLS roots for the tools
  iproute2           # ip, for network-namespace checks
  debootstrap        # building a Debian base rootfs without Docker Hub
)

mode=install
case "${1:-}" in
  "") ;;
  --check) mode=check ;;
  --list) printf '%s\n' "${PACKAGES[@]}"; exit 0 ;;
  -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--check|--list]" >&2; exit 2 ;;
esac

# dpkg-query prints one status per package; anything but "install ok installed" (including
# "no packages found", which goes to stderr and leaves the line empty) counts as missing.
missing=()
while IFS=' ' read -r pkg status; do
  [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done < <(
  for p in "${PACKAGES[@]}"; do
    printf '%s %s\n' "$p" "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)"
  done
)

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#PACKAGES[@]} packages are installed"
  exit 0
fi

echo "install-deps: missing: ${missing[*]}"
if [[ $mode == check ]]; then
  exit 1
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "install-deps: not root, so not installing; run:"
  echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
# Wait for another apt/dpkg run instead of failing on its lock.
APT_OPTS=(-o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)

# A package is installable when apt knows a candidate version for it.
has_candidate() {
  local cand
  cand=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')
  [[ -n "$cand" && "$cand" != "(none)" ]]
}

unknown=()
for p in "${missing[@]}"; do has_candidate "$p" || unknown+=("$p"); done
if ((${#unknown[@]})); then
  # Empty or stale package lists (fresh container): refresh them once and look again.
  echo "install-deps: no candidate for ${unknown[*]}; running apt-get update"
  apt-get "${APT_OPTS[@]}" update -q
  unknown=()
  for p in "${missing[@]}"; do has_candidate "$p" || unknown+=("$p"); done
fi

installable=()
for p in "${missing[@]}"; do
  [[ " ${unknown[*]} " == *" $p "* ]] || installable+=("$p")
done
if ((${#installable[@]})); then
  apt-get "${APT_OPTS[@]}" install -y -q --no-install-recommends "${installable[@]}"
fi
if ((${#unknown[@]})); then
  echo "install-deps: not available from the configured apt sources: ${unknown[*]}" >&2
  exit 1
fi
echo "install-deps: done"
