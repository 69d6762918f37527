#!/usr/bin/env bash
# RUN benchmarks: kiln (rootless, as an unprivileged user) against BuildKit (Debian's dockerd
# 20.10 with DOCKER_BUILDKIT=1) and rootless buildah, same Dockerfiles, same busybox base,
# in one run. Needs root (to start a private dockerd and to act as the test user).
#
#   scripts/bench-run.sh [KILN_BINARY] [RUNS]
#
# Prints a markdown table: median wall time per build, and kiln's ratio to each.
set -euo pipefail

KILN=${1:-target/release/kiln}
RUNS=${2:-5}
USER_NAME=kilntest
[ "$(id -u)" = 0 ] || { echo "bench-run: run as root (it starts dockerd and uses the $USER_NAME user)" >&2; exit 1; }
command -v buildah >/dev/null || { echo "bench-run: buildah is missing (scripts/install-deps.sh)" >&2; exit 1; }
id "$USER_NAME" >/dev/null 2>&1 || useradd -m -s /bin/sh "$USER_NAME"
grep -q "^$USER_NAME:" /etc/subuid || echo "$USER_NAME:200000:65536" >> /etc/subuid
grep -q "^$USER_NAME:" /etc/subgid || echo "$USER_NAME:200000:65536" >> /etc/subgid

T=$(mktemp -d /tmp/kiln-bench-run.XXXXXX)
DOCKERD_PID=
cleanup() {
  [ -n "$DOCKERD_PID" ] && kill "$DOCKERD_PID" 2>/dev/null && wait "$DOCKERD_PID" 2>/dev/null || true
  # Stores written in the user namespace hold files owned by subordinate ids.
  rm -rf "$T" 2>/dev/null || true
}
trap cleanup EXIT
chmod 755 "$T"
cp "$KILN" "$T/kiln"
as_user() { setpriv --reuid="$USER_NAME" --regid="$USER_NAME" --init-groups env HOME="$T" XDG_RUNTIME_DIR="$T/run" "$@"; }

# The base: busybox from Debian's busybox-static, built by kiln.
mkdir -p "$T/genesis" "$T/overhead" "$T/heavy" "$T/run" "$T/node/src"
scripts/make-busybox-rootfs.sh "$T/genesis/busybox.tar.xz" >/dev/null
printf 'FROM scratch\nADD busybox.tar.xz /\nCMD ["sh"]\n' > "$T/genesis/Dockerfile"
{ echo "FROM genesis"; for _ in $(seq 50); do echo "RUN true"; done; } > "$T/overhead/Dockerfile"
cat > "$T/heavy/Dockerfile" <<'DOCKERFILE'
FROM genesis
RUN mkdir -p /data/keep /data/replace /data/old && echo 1 > /data/keep/a && echo 2 > /data/replace/b \
 && echo 3 > /data/old/c && echo 4 > /data/chmod-me && echo 5 > /data/touch-me && echo 6 > /data/chown-me \
 && ln -s keep/a /data/link && ln /data/keep/a /data/hard && mkdir /data/home && chown 1000:1000 /data/home
RUN rm /bin/vi && rm -rf /data/replace && mkdir /data/replace && echo new > /data/replace/x \
 && mv /data/old /data/renamed && chmod 0600 /data/chmod-me && touch -d '2001-01-01 00:00' /data/touch-me \
 && chown 1000:100 /data/chown-me && echo mine > /data/home/f && chown 1000:1000 /data/home/f \
 && cp /bin/busybox /data/suid && chmod 4755 /data/suid && su -s /bin/sh nobody -c 'id -u > /tmp/nobody-ran'
RUN for i in $(seq 200); do mkdir -p /gen/$i && echo $i > /gen/$i/file; done && tar -cf /gen.tar /gen
RUN rm -rf /gen && rm /data/link && ln -s /data/renamed/c /data/link && echo re > /data/keep/a
CMD ["sh"]
DOCKERFILE
# The tutorial layout: dependency manifest, install, then the sources.
cat > "$T/node/Dockerfile" <<'DOCKERFILE'
FROM genesis
WORKDIR /app
COPY package.json ./
RUN for i in $(seq 300); do mkdir -p node_modules/m$i && echo "module $i" > node_modules/m$i/index.js; done \
 && cp package.json installed.json
COPY src ./src
CMD ["sh", "-c", "cat src/index.js"]
DOCKERFILE
echo '{"name": "bench", "version": "1.0.0"}' > "$T/node/package.json"
for i in $(seq 200); do echo "export const v$i = $i;" > "$T/node/src/file$i.js"; done
echo 'console.log("hi")' > "$T/node/src/index.js"
chown -R "$USER_NAME": "$T"
(cd "$T" && as_user ./kiln --root "$T/kiln-store" build -q -t genesis -o genesis.tar genesis >/dev/null)

# BuildKit: a private dockerd that never pulls and has no network setup.
mkdir -p "$T/docker"
printf '{}\n' > "$T/docker/daemon.json"
/usr/sbin/dockerd --config-file "$T/docker/daemon.json" --data-root "$T/docker/root" --exec-root "$T/docker/exec" \
  -H "unix://$T/docker/sock" --pidfile "$T/docker/pid" --bridge=none --iptables=false --ip6tables=false \
  --ip-forward=false --ip-masq=false >"$T/docker/log" 2>&1 &
DOCKERD_PID=$!
docker_() { DOCKER_CONFIG="$T/docker" /usr/bin/docker -H "unix://$T/docker/sock" "$@"; }
for _ in $(seq 100); do docker_ version >/dev/null 2>&1 && break; sleep 0.1; done
docker_ load -i "$T/genesis.tar" >/dev/null

# buildah, rootless, with the same base under the same name.
B="--root $T/buildah/root --runroot $T/buildah/runroot"
as_user buildah $B pull -q "docker-archive:$T/genesis.tar" >"$T/buildah.id"
as_user buildah $B tag "$(cat "$T/buildah.id")" genesis

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
time_runs() { # label command...
  local label=$1; shift
  for _ in $(seq "$RUNS"); do
    local t0; t0=$(now); "$@" >/dev/null 2>&1 || { echo "bench-run: $label failed" >&2; exit 1; }
    echo "$(now) - $t0" | bc
  done | median
}
bench() { # name dir
  local name=$1 dir=$2
  local k b h
  k=$(time_runs "kiln $name" as_user "$T/kiln" --root "$T/kiln-store" build -q --no-cache --network none "$dir")
  b=$(time_runs "BuildKit $name" env DOCKER_BUILDKIT=1 DOCKER_CONFIG="$T/docker" /usr/bin/docker -H "unix://$T/docker/sock" build -q --no-cache --network none "$dir")
  h=$(time_runs "buildah $name" as_user buildah $B bud -q --layers=false --network none "$dir")
  printf '| %s | %.3f s | %.3f s | %.3f s | %.2f× | %.2f× |\n' "$name" "$k" "$b" "$h" "$(echo "$k / $b" | bc -l)" "$(echo "$k / $h" | bc -l)"
}
echo "| build (median of $RUNS) | kiln (rootless) | BuildKit (dockerd 20.10) | buildah (rootless) | kiln / BuildKit | kiln / buildah |"
echo "|---|---|---|---|---|---|"
bench "50 × RUN true" "$T/overhead"
bench "run-heavy (4 RUN steps)" "$T/heavy"

# The build cache: a rebuild with nothing changed, after editing one source file, and after
# editing the dependency manifest (the install step runs again). Each builder is warmed once;
# before every timed build the file is edited again, so each timed build sees a change.
cached_build() { # builder dir
  case $1 in
    kiln) as_user "$T/kiln" --root "$T/kiln-store" build -q --network none -t node "$2" ;;
    buildkit) env DOCKER_BUILDKIT=1 DOCKER_CONFIG="$T/docker" /usr/bin/docker -H "unix://$T/docker/sock" build -q --network none -t node "$2" ;;
    buildah) as_user buildah $B bud -q --layers --network none -t node "$2" ;;
  esac
}
time_edits() { # builder file-to-edit|- dir
  local builder=$1 file=$2 dir=$3
  for i in $(seq "$RUNS"); do
    if [ "$file" != - ]; then as_user sh -c "echo '// edit $builder $i' >> '$file'"; fi
    local t0; t0=$(now); cached_build "$builder" "$dir" >/dev/null 2>&1 || { echo "bench-run: $builder cache build failed" >&2; exit 1; }
    echo "$(now) - $t0" | bc
  done | median
}
for builder in kiln buildkit buildah; do cached_build "$builder" "$T/node" >/dev/null 2>&1; done
bench_cache() { # name file|-
  local name=$1 file=$2 k b h
  k=$(time_edits kiln "$file" "$T/node")
  b=$(time_edits buildkit "$file" "$T/node")
  h=$(time_edits buildah "$file" "$T/node")
  printf '| %s | %.3f s | %.3f s | %.3f s | %.2f× | %.2f× |\n' "$name" "$k" "$b" "$h" "$(echo "$k / $b" | bc -l)" "$(echo "$k / $h" | bc -l)"
}
bench_cache "node-style: no-op rebuild (all cached)" -
bench_cache "node-style: one source file edited" "$T/node/src/file7.js"
bench_cache "node-style: package.json edited (install reruns)" "$T/node/package.json"
