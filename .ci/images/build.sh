#!/usr/bin/env bash
# Build the local Docker test images devenv's Docker runtime is tested against:
#
#   devenv-test/base:bookworm   debootstrap'd Debian 12 with PostgreSQL 15, PgBouncer, Redis
#   devenv-test/postgres:15     contract of the official postgres:15 image
#   devenv-test/pgbouncer:1.18  contract of edoburu/pgbouncer
#   devenv-test/redis:7         contract of the official redis:7 image
#
# No container registry is reachable here, so nothing can be pulled; see README.md.
#
# An image is reused when it exists and was built from the same inputs (a hash
# kept in the label devenv.inputs); --rebuild builds all four again.
# Usage: .ci/images/build.sh [--rebuild]
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REBUILD=0
for arg in "$@"; do
    case "$arg" in
        --rebuild) REBUILD=1 ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

BASE_IMAGE=devenv-test/base:bookworm
SUITE=bookworm
# Everything the three images need. debootstrap resolves Depends only.
BASE_PACKAGES=postgresql-15,postgresql-client-15,pgbouncer,redis-server,redis-tools,ca-certificates,passwd,locales,libnss-wrapper,xz-utils,zstd
# .deb cache shared between builds (outside the repo) so --rebuild downloads nothing.
DEB_CACHE=/var/cache/devenv-test-images/debs
# The legacy builder works with every daemon (Debian's docker.io 20.10 has no buildx).
export DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-0}"

log() { printf '[images] %s\n' "$*" >&2; }
now() { echo "${EPOCHREALTIME/,/.}"; }
T_START=$(now)
STEPS=()
STEP_NAME='' STEP_T0=''
step_begin() { STEP_NAME=$1; STEP_T0=$(now); log "==> $STEP_NAME"; }
step_end() {
    local d; d=$(awk -v a="$STEP_T0" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}')
    STEPS+=("$(printf '%-44s %7ss' "$STEP_NAME" "$d")")
    log "    done in ${d}s"
}
summary() {
    local total; total=$(awk -v a="$T_START" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}')
    log "step durations:"
    local s; for s in "${STEPS[@]}"; do log "  $s"; done
    log "  $(printf '%-44s %7ss' total "$total")"
}

# Serialise concurrent builds on one machine.
exec 9>/var/lock/devenv-test-images.lock
flock 9

# --- docker ------------------------------------------------------------------
step_begin "docker engine"
if ! docker info >/dev/null 2>&1; then
    bash "$HERE/../docker-up.sh"
fi
step_end

image_label() {  # image label -> value ('' when the image or label is missing)
    docker image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true
}
# An image is up to date when it exists with the wanted input hash.
up_to_date() { [ "$REBUILD" = 0 ] && [ "$(image_label "$1" devenv.inputs)" = "$2" ]; }

# --- mirror ------------------------------------------------------------------
# The Debian mirror this machine's apt uses for the bookworm suite (one-line
# sources.list entries and deb822 .sources files); override with DEVENV_DEBIAN_MIRROR.
detect_mirror() {
    local f files=()
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] && files+=("$f")
    done
    [ "${#files[@]}" -gt 0 ] || return 0
    # one-line format: deb [opts] URI SUITE COMPONENTS...
    awk -v suite="$SUITE" '
        FILENAME ~ /\.sources$/ { next }
        $1 == "deb" {
            i = 2
            if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
            if ($(i+1) == suite) { print $i; exit }
        }' "${files[@]}" | head -n1
    # deb822 format: paragraphs with Types/URIs/Suites
    awk -v suite="$SUITE" '
        FNR == 1 { types = uris = suites = "" }
        FILENAME !~ /\.sources$/ { next }
        /^[ \t]*#/ { next }
        /^[ \t]*$/ { check(); types = uris = suites = ""; next }
        tolower($1) == "types:"  { types = $0 }
        tolower($1) == "uris:"   { uris = $2 }
        tolower($1) == "suites:" { suites = $0 }
        END { check() }
        function check(  n, a, j) {
            if (types !~ /(^|[ \t])deb([ \t]|$)/ || uris == "") return
            n = split(suites, a, /[ \t]+/)
            for (j = 2; j <= n; j++) if (a[j] == suite) { print uris; exit }
        }' "${files[@]}" | head -n1
}
MIRROR="${DEVENV_DEBIAN_MIRROR:-$(detect_mirror | head -n1)}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
MIRROR="${MIRROR%/}"

# --- base ----------------------------------------------------------------------
ROOTFS=''
cleanup_rootfs() {
    [ -n "$ROOTFS" ] && [ -d "$ROOTFS" ] || return 0
    # debootstrap mounts proc/sys inside the target; never rm -rf through them.
    local m
    for m in $(awk -v p="$ROOTFS/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf --one-file-system "$ROOTFS"
    ROOTFS=''
}
trap cleanup_rootfs EXIT
trap 'exit 130' INT TERM

base_hash=$( { echo "$SUITE $MIRROR $BASE_PACKAGES"; sed -n '/^build_base()/,/^}/p' "$0"; cat "$HERE/base/devenv-set-ids"; } | sha256sum | cut -c1-16)

build_base() {
    if ! command -v debootstrap >/dev/null 2>&1; then
        step_begin "apt-get install debootstrap"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
        step_end
    fi
    mkdir -p "$DEB_CACHE"
    ROOTFS=$(mktemp -d /var/tmp/devenv-rootfs.XXXXXX)
    local dlog=/var/tmp/devenv-debootstrap.log

    step_begin "debootstrap $SUITE ($MIRROR)"
    if ! debootstrap --variant=minbase --components=main --cache-dir="$DEB_CACHE" \
            --include="$BASE_PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" >"$dlog" 2>&1; then
        tail -n 40 "$dlog" >&2
        [ -f "$ROOTFS/debootstrap/debootstrap.log" ] && tail -n 40 "$ROOTFS/debootstrap/debootstrap.log" >&2
        log "debootstrap failed (full log: $dlog)"
        exit 1
    fi
    rm -f "$dlog"
    step_end

    step_begin "trim rootfs"
    # The official images carry no cluster of Debian's own: the entrypoint makes one.
    rm -rf "$ROOTFS"/etc/postgresql/15/main "$ROOTFS"/var/lib/postgresql/15
    sed -ri 's/^#?[[:space:]]*create_main_cluster[[:space:]]*=.*/create_main_cluster = false/' \
        "$ROOTFS"/etc/postgresql-common/createcluster.conf
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/*.bin \
           "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* \
           "$ROOTFS"/usr/share/info/* "$ROOTFS"/var/log/*.log "$ROOTFS"/var/log/apt/*
    # message translations (locale.alias, needed by localedef, stays)
    find "$ROOTFS"/usr/share/locale -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
    install -m 0755 "$HERE/base/devenv-set-ids" "$ROOTFS/usr/local/sbin/devenv-set-ids"
    step_end

    step_begin "docker import $BASE_IMAGE"
    tar --numeric-owner --xattrs -C "$ROOTFS" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' \
        --change "LABEL devenv.inputs=$base_hash" \
        --message "debootstrap $SUITE minbase + $BASE_PACKAGES" \
        - "$BASE_IMAGE" >/dev/null
    step_end

    step_begin "remove rootfs"
    cleanup_rootfs
    step_end
}

if up_to_date "$BASE_IMAGE" "$base_hash"; then
    log "reusing $BASE_IMAGE"
else
    build_base
fi
base_id=$(docker image inspect --format '{{.Id}}' "$BASE_IMAGE")

# --- service images -----------------------------------------------------------
build_service() {  # name tag
    local name=$1 image=$2 ctx="$HERE/$1" hash
    hash=$( { echo "$base_id"; (cd "$ctx" && find . -type f -print0 | sort -z | xargs -0 sha256sum); \
              (cd "$ctx" && find . -type f -perm -u+x | sort); } | sha256sum | cut -c1-16)
    if up_to_date "$image" "$hash"; then
        log "reusing $image"
        return 0
    fi
    step_begin "docker build $image"
    local blog; blog=$(mktemp /tmp/devenv-build-"$name".XXXXXX.log)
    if ! docker build --label "devenv.inputs=$hash" -t "$image" "$ctx" >"$blog" 2>&1; then
        tail -n 40 "$blog" >&2
        log "docker build $image failed (full log: $blog)"
        exit 1
    fi
    rm -f "$blog"
    step_end
}

build_service postgres devenv-test/postgres:15
build_service pgbouncer devenv-test/pgbouncer:1.18
build_service redis devenv-test/redis:7

# Drop the untagged images left behind by rebuilds.
docker image prune -f --filter "label=devenv.inputs" >/dev/null 2>&1 || true

docker image ls --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' | grep '^devenv-test/' | sed 's/^/[images]   /' >&2
summary
