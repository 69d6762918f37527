#!/usr/bin/env bash
# Builds a minimal busybox root filesystem as a reproducible .tar.xz:
#
#   scripts/make-busybox-rootfs.sh OUT.tar.xz
#
# Contents: bin/busybox (Debian's busybox-static, or $BUSYBOX), one symlink in bin/ per applet,
# etc/passwd and etc/group with root and nobody, and the empty directories a container runtime
# expects (dev, proc, sys, tmp with mode 1777, root). No hosts/resolv.conf: runtimes provide
# them. The archive depends only on the busybox binary and SOURCE_DATE_EPOCH (default 0):
# names are sorted, owners are 0:0 numeric, times are fixed, and pax headers carry no pid,
# atime or ctime. It works as root and as a normal user (nothing needs chown).
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUT.tar.xz" >&2
  exit 2
fi
out=$1
busybox=${BUSYBOX:-/bin/busybox}
epoch=${SOURCE_DATE_EPOCH:-0}

if [[ ! -x $busybox ]]; then
  echo "$0: $busybox not found; install busybox-static (scripts/install-deps.sh)" >&2
  exit 1
fi
# A dynamically linked busybox would not run inside an image with no libc.
# (ldd exits 1 for a static binary, so capture its output rather than pipe it under pipefail.)
ldd_out=$(LC_ALL=C ldd "$busybox" 2>&1 || true)
if [[ $ldd_out != *"not a dynamic executable"* ]]; then
  echo "$0: $busybox is dynamically linked; install busybox-static" >&2
  exit 1
fi

stage=$(mktemp -d "${TMPDIR:-/tmp}/busybox-rootfs.XXXXXX")
trap 'rm -rf "$stage"' EXIT
# Modes are set explicitly below; the umask must not leak into the archive.
umask 022

mkdir -p "$stage"/{bin,etc,dev,proc,sys,tmp,root}
cp "$busybox" "$stage/bin/busybox"
chmod 0755 "$stage/bin/busybox"
# One symlink per applet; "busybox" itself is the binary, not a link.
"$busybox" --list | while IFS= read -r applet; do
  [[ -n $applet && $applet != busybox ]] || continue
  ln -s busybox "$stage/bin/$applet"
done

cat >"$stage/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$stage/etc/group" <<'EOF'
root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
tty:x:5:
www-data:x:33:
users:x:100:
nogroup:x:65534:
EOF
chmod 0644 "$stage/etc/passwd" "$stage/etc/group"
chmod 0755 "$stage"/{bin,etc,dev,proc,sys}
chmod 0700 "$stage/root"
chmod 1777 "$stage/tmp"

# Sorted, NUL-separated member list without the "./" prefix, so the tar is independent of
# readdir order and locale.
(cd "$stage" && find . -mindepth 1 -printf '%P\0' | LC_ALL=C sort -z) >"$stage.list"
trap 'rm -rf "$stage" "$stage.list"' EXIT

tmp_out="$out.tmp.$$"
trap 'rm -rf "$stage" "$stage.list" "$tmp_out"' EXIT
tar -C "$stage" \
  --null --no-recursion -T "$stage.list" \
  --format=posix --pax-option='exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime' \
  --owner=0 --group=0 --numeric-owner \
  --mtime="@$epoch" \
  -cf - |
  # -T1: multi-threaded xz splits the stream into blocks differently from single-threaded.
  xz -T1 -6 -c >"$tmp_out"
mv -f "$tmp_out" "$out"
echo "wrote $out ($(stat -c %s "$out") bytes, $(tr -cd '\0' <"$stage.list" | wc -c) entries)"
