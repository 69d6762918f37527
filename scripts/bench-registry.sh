#!/usr/bin/env bash
# Registry benchmarks: push and pull of one ~300 MB image (5 layers) over loopback, kiln
# against skopeo and Debian's dockerd 20.10, in one run, against one local docker-registry
# (Debian's distribution 2.8, plain http on 127.0.0.1). Needs root (it starts a private dockerd).
#
#   scripts/bench-registry.sh [KILN_BINARY] [RUNS]     RUNS: else $BENCH_REGISTRY_RUNS, else 3
#
# Every timed run starts from a cold destination: pushes go to a registry restarted on empty
# storage under a repository name never used before; pulls go into an empty kiln store, a new
# OCI directory, or a dockerd whose image store was emptied. Sources stay warm (page cache), and
# nothing else is cleared. Runs of the three tools are interleaved (kiln, skopeo, docker, kiln,
# ...) so that load from other work on the machine hits them alike.
#
# Prints the image's sizes, then a markdown table: median wall time, MB/s of the bytes that went
# over the wire (MB = 10^6 bytes), and kiln's ratio to each.
set -euo pipefail

COMMAND="$0 $*"
KILN=${1:-target/release/kiln}
RUNS=${2:-${BENCH_REGISTRY_RUNS:-3}}
LAYERS=5
[ "$(id -u)" = 0 ] || { echo "bench-registry: run as root (it starts dockerd)" >&2; exit 1; }
for tool in docker-registry skopeo /usr/sbin/dockerd /usr/bin/docker ss; do
  command -v "$tool" >/dev/null || { echo "bench-registry: $tool is missing (scripts/install-deps.sh)" >&2; exit 1; }
done
[ -x "$KILN" ] || { echo "bench-registry: no kiln binary at $KILN (make build)" >&2; exit 1; }
KILN=$(realpath "$KILN")

note() { echo "bench-registry: $*" >&2; }
T=$(mktemp -d /tmp/kiln-bench-registry.XXXXXX)
REGISTRY_PID=
DOCKERD_PID=
stop_pid() { # pid: SIGTERM, then wait for it (it is our child)
  kill "$1" 2>/dev/null || return 0
  wait "$1" 2>/dev/null || true
}
cleanup() {
  [ -z "$REGISTRY_PID" ] || stop_pid "$REGISTRY_PID"
  [ -z "$DOCKERD_PID" ] || stop_pid "$DOCKERD_PID"
  # overlay2 bind-mounts its home onto itself; a dockerd that did not stop cleanly leaves it.
  awk -v t="$T/" 'index($5, t) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
  rm -rf "$T"
}
trap cleanup EXIT
trap 'note "failed at line $LINENO"' ERR

# --- The registry: Debian's docker-registry, configured like tests/util/registry.rs. ---------
free_port() { # a port on 127.0.0.1 nobody listens on a moment ago
  local p
  while :; do
    p=$((20000 + RANDOM % 40000))
    [ -z "$(ss -Hltn "sport = :$p")" ] && { echo "$p"; return; }
  done
}
http_status() { # path → the status code of GET 127.0.0.1:PORT/path (empty if no answer)
  local code
  code=$( { exec 3<>"/dev/tcp/127.0.0.1/$PORT"; } 2>/dev/null || exit 0
    printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$1" >&3 && head -c 12 <&3) || true
  echo "${code:9:3}"
}
start_registry() { # on $PORT, storage in $T/registry/data
  mkdir -p "$T/registry"
  cat > "$T/registry/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $T/registry/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$PORT
  secret: kiln-bench-not-secret
EOF
  docker-registry serve "$T/registry/config.yml" >>"$T/registry/log" 2>&1 &
  REGISTRY_PID=$!
  for _ in $(seq 200); do
    [ "$(http_status /v2/)" = 200 ] && return 0
    kill -0 "$REGISTRY_PID" 2>/dev/null || break
    sleep 0.05
  done
  echo "bench-registry: docker-registry did not start on 127.0.0.1:$PORT:" >&2
  tail -n 20 "$T/registry/log" >&2
  exit 1
}
fresh_registry() { # restart on the same port with empty storage: no blob can be skipped
  [ -z "$REGISTRY_PID" ] || stop_pid "$REGISTRY_PID"
  REGISTRY_PID=
  rm -rf "$T/registry/data"
  start_registry
}
registry_bytes() { # blobs the registry holds (config, layers, manifest), in bytes
  find "$T/registry/data/docker/registry/v2/blobs" -type f -name data -printf '%s\n' | awk '{s += $1} END {print s + 0}'
}
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
PORT=$(free_port)
REG=127.0.0.1:$PORT
start_registry

# --- The image: LAYERS layers of 60 MiB, each 15 MiB random, 15 MiB base64 text, 30 MiB log
# lines, so gzip has real work but cannot shrink everything. ----------------------------------
note "generating the image's files"
mkdir -p "$T/ctx"
echo "FROM scratch" > "$T/ctx/Dockerfile"
for i in $(seq "$LAYERS"); do
  d="$T/ctx/layer$i"
  mkdir -p "$d/bin" "$d/text" "$d/log"
  head -c $((15 << 20)) /dev/urandom > "$d/bin/random.bin"
  head -c $((12 << 20)) /dev/urandom | base64 -w 76 > "$d/text/base64.txt"
  truncate -s $((15 << 20)) "$d/text/base64.txt"
  for part in 1 2 3; do
    awk -v seed="$i$part" 'BEGIN {
      srand(seed); n = 0
      split("GET POST PUT DELETE HEAD", verb, " "); split("200 200 200 201 204 301 404 500", st, " ")
      while (n < 10485760) {
        line = sprintf("2026-11-%02d %02d:%02d:%02d.%03d INFO [worker-%d] %s /api/v1/items/%d?page=%d %s %d bytes in %d ms\n",
          1 + int(rand() * 28), int(rand() * 24), int(rand() * 60), int(rand() * 60), int(rand() * 1000),
          int(rand() * 16), verb[1 + int(rand() * 5)], int(rand() * 100000), int(rand() * 50),
          st[1 + int(rand() * 8)], int(rand() * 65536), int(rand() * 900))
        printf "%s", line; n += length(line)
      }
    }' > "$d/log/part$part.log"
    truncate -s $((10 << 20)) "$d/log/part$part.log"
  done
  echo "COPY layer$i/ /data/$i/" >> "$T/ctx/Dockerfile"
done
note "building it with kiln, saving it with gzip layers, loading it into dockerd"
U="$T/store-uncompressed" # kiln build's store: layers as plain tar (D10)
G="$T/store-gzip"         # the same image with gzip layers, as a pull would store it
"$KILN" --root "$U" build -q -t bench:src "$T/ctx" >/dev/null
"$KILN" --root "$U" save --format oci --compression gzip -o "$T/image-gzip.tar" bench:src
"$KILN" --root "$G" load -i "$T/image-gzip.tar" >/dev/null
"$KILN" --root "$U" save -o "$T/image-docker.tar" bench:src # docker archive, plain layers
rm -f "$T/image-gzip.tar"
SRC=docker.io/library/bench:src # the name in both stores' index.json, for skopeo's oci: transport

# --- dockerd: a private daemon (as in bench-run.sh) that never pulls from anywhere but $REG.
# Loopback registries are insecure (plain http) for dockerd by default: 127.0.0.0/8 is always
# in its insecure-registry list, so no --insecure-registry is needed (and the port may change).
mkdir -p "$T/docker/cli"
printf '{}\n' > "$T/docker/daemon.json"
/usr/sbin/dockerd --config-file "$T/docker/daemon.json" --data-root "$T/docker/root" --exec-root "$T/docker/exec" \
  -H "unix://$T/docker/sock" --pidfile "$T/docker/pid" --bridge=none --iptables=false --ip6tables=false \
  --ip-forward=false --ip-masq=false >"$T/docker/log" 2>&1 &
DOCKERD_PID=$!
docker_() { DOCKER_CONFIG="$T/docker/cli" /usr/bin/docker -H "unix://$T/docker/sock" "$@"; }
for _ in $(seq 300); do docker_ version >/dev/null 2>&1 && break; sleep 0.1; done
docker_ version >/dev/null || { echo "bench-registry: dockerd did not start:" >&2; tail -n 20 "$T/docker/log" >&2; exit 1; }
DRIVER=$(docker_ info --format '{{.Driver}}')
INSECURE=$(docker_ info --format '{{range .RegistryConfig.InsecureRegistryCIDRs}}{{.}} {{end}}')
docker_ load -i "$T/image-docker.tar" >/dev/null
rm -f "$T/image-docker.tar"
# dockerd remembers which registry blobs it pushed or pulled for each layer (v2 metadata) and
# would mount them from another repository instead of uploading; forget it before each run.
forget_docker_metadata() { rm -rf "$T/docker/root/image/$DRIVER/distribution"; }
docker_empty() { # remove every image and layer; fail if a layer is left
  local ids
  mapfile -t ids < <(docker_ images -aq)
  [ "${#ids[@]}" = 0 ] || docker_ rmi -f "${ids[@]}" >/dev/null 2>&1 || true
  docker_ image prune -af >/dev/null
  [ -z "$(docker_ images -aq)" ] || { echo "bench-registry: dockerd still has images" >&2; exit 1; }
  if [ "$DRIVER" = overlay2 ] && [ -n "$(find "$T/docker/root/overlay2" -mindepth 1 -maxdepth 1 ! -name l)" ]; then
    echo "bench-registry: dockerd still has layers" >&2; exit 1
  fi
  forget_docker_metadata
}

# --- Timing. ---------------------------------------------------------------------------------
now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
timed() { # file command...: append the wall time of one run of command to file
  local file=$1; shift
  local t0 t1
  t0=$(now)
  "$@" >"$T/last.out" 2>&1 || { echo "bench-registry: failed: $*" >&2; cat "$T/last.out" >&2; exit 1; }
  t1=$(now)
  echo "$t1 - $t0" | bc >> "$file"
}
mb() { echo "scale=1; $1 / 1000000" | bc; }
cell() { # seconds bytes → "2.345 s, 123 MB/s"
  printf '%.3f s, %.0f MB/s' "$1" "$(echo "$2 / $1 / 1000000" | bc -l)"
}
ratio() { printf '%.2f×' "$(echo "$1 / $2" | bc -l)"; }
mkdir -p "$T/times"

# Push: for each source store, kiln push, skopeo copy from the same store (an OCI layout), and
# docker push of the loaded image, each into an emptied registry under a new repository name.
declare -A SENT # tool-case → bytes the registry received in the last run
push_case() { # case store
  local c=$1 store=$2
  for run in $(seq "$RUNS"); do
    fresh_registry
    # kiln gzips plain layers on push and remembers the result; forget it, so every run
    # compresses as skopeo and docker do.
    rm -rf "$store/cache/compressed"
    timed "$T/times/push-$c-kiln" "$KILN" --root "$store" push -q bench:src "$REG/kiln-$c-$run:1"
    SENT[$c-kiln]=$(registry_bytes)
    fresh_registry
    timed "$T/times/push-$c-skopeo" skopeo --insecure-policy copy -q --dest-tls-verify=false \
      "oci:$store:$SRC" "docker://$REG/skopeo-$c-$run:1"
    SENT[$c-skopeo]=$(registry_bytes)
    if [ "$c" = plain ]; then # docker has one kind of source: its own (uncompressed) layers
      fresh_registry
      forget_docker_metadata
      docker_ tag bench:src "$REG/docker-$c-$run:1"
      timed "$T/times/push-$c-docker" docker_ push "$REG/docker-$c-$run:1"
      docker_ rmi "$REG/docker-$c-$run:1" >/dev/null
      SENT[$c-docker]=$(registry_bytes)
    fi
  done
}
note "push: $RUNS runs per tool, plain layers then gzip layers"
push_case plain "$U"
push_case gzip "$G"

note "pull: $RUNS runs per tool, gzip layers then plain layers"
# Pull: the gzip image and the plain-layer image, each pushed once by kiln (byte for byte the
# manifests and blobs of the stores above).
fresh_registry
"$KILN" --root "$U" push -q --compression none bench:src "$REG/bench:plain" >/dev/null
PLAIN_BYTES=$(registry_bytes)
fresh_registry
"$KILN" --root "$G" push -q bench:src "$REG/bench:gzip" >/dev/null
GZIP_BYTES=$(registry_bytes)
"$KILN" --root "$U" push -q --compression none bench:src "$REG/bench:plain" >/dev/null
docker_empty
pull_case() { # case
  local c=$1
  for run in $(seq "$RUNS"); do
    rm -rf "$T/pull"
    timed "$T/times/pull-$c-kiln" "$KILN" --root "$T/pull/kiln-$run" pull -q "$REG/bench:$c"
    timed "$T/times/pull-$c-skopeo" skopeo --insecure-policy copy -q --src-tls-verify=false \
      "docker://$REG/bench:$c" "oci:$T/pull/skopeo-$run:bench"
    timed "$T/times/pull-$c-docker" docker_ pull "$REG/bench:$c"
    docker_empty
  done
}
pull_case gzip
pull_case plain

# --- Report. ---------------------------------------------------------------------------------
RAW=$(du -sb --apparent-size "$T/ctx" | cut -f1)
echo "Image: FROM scratch + $LAYERS COPY layers; $(mb "$RAW") MB of files ($LAYERS × 15 MiB random, 15 MiB base64, 30 MiB log lines)"
echo "In the registry (blobs + manifest): $(mb "$PLAIN_BYTES") MB with plain tar layers, $(mb "$GZIP_BYTES") MB with kiln's gzip -6 layers"
echo "Sent by a push: kiln $(mb "${SENT[plain-kiln]}") MB from the plain store, $(mb "${SENT[gzip-kiln]}") MB from the gzip store;" \
  "skopeo $(mb "${SENT[plain-skopeo]}") / $(mb "${SENT[gzip-skopeo]}") MB; docker $(mb "${SENT[plain-docker]}") MB"
echo "dockerd: storage driver $DRIVER, plain-http registries $INSECURE(its default); $(nproc) CPUs; load average at the start $LOAD_START, at the end $(cut -d' ' -f1-3 /proc/loadavg)"
echo "Command: $COMMAND (runs: $RUNS)"
echo
row() { # label kiln-times skopeo-times docker-times(or -) kiln-bytes skopeo-bytes docker-bytes
  local k s d
  k=$(median < "$2"); s=$(median < "$3")
  if [ "$4" = - ]; then
    printf '| %s | %s | %s | — | %s | — |\n' "$1" "$(cell "$k" "$5")" "$(cell "$s" "$6")" "$(ratio "$k" "$s")"
  else
    d=$(median < "$4")
    printf '| %s | %s | %s | %s | %s | %s |\n' "$1" "$(cell "$k" "$5")" "$(cell "$s" "$6")" "$(cell "$d" "$7")" \
      "$(ratio "$k" "$s")" "$(ratio "$k" "$d")"
  fi
}
P=$T/times
echo "| median of $RUNS; MB/s on the wire | kiln | skopeo $(skopeo --version | awk '{print $3}') | docker $(docker_ version --format '{{.Server.Version}}') | kiln / skopeo | kiln / docker |"
echo "|---|---|---|---|---|---|"
row "push, plain layers (kiln build's store; every tool gzips them on the way)" \
  "$P/push-plain-kiln" "$P/push-plain-skopeo" "$P/push-plain-docker" "${SENT[plain-kiln]}" "${SENT[plain-skopeo]}" "${SENT[plain-docker]}"
row "push, gzip layers (no tool compresses)" \
  "$P/push-gzip-kiln" "$P/push-gzip-skopeo" - "${SENT[gzip-kiln]}" "${SENT[gzip-skopeo]}" ""
row "pull, gzip layers (docker also unpacks)" \
  "$P/pull-gzip-kiln" "$P/pull-gzip-skopeo" "$P/pull-gzip-docker" "$GZIP_BYTES" "$GZIP_BYTES" "$GZIP_BYTES"
row "pull, plain layers (docker also unpacks)" \
  "$P/pull-plain-kiln" "$P/pull-plain-skopeo" "$P/pull-plain-docker" "$PLAIN_BYTES" "$PLAIN_BYTES" "$PLAIN_BYTES"
