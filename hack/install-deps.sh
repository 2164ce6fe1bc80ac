#!/usr/bin/env bash
# Installs everything snapboot's tests and demo need on a fresh Debian 12 machine,
# at pinned versions. Idempotent: what is already there at the right version is kept.
set -euo pipefail

CONTAINERD_VERSION=v2.4.2
RUNC_VERSION=v1.5.2
REGISTRY_VERSION=v3.1.2
ORAS_VERSION=v1.3.6
NERDCTL_VERSION=v2.2.1
CRIU_MIN_VERSION=4.2

BIN=${SNAPBOOT_TOOLS_BIN:-/usr/local/bin}
export GOBIN=$BIN
export PATH=$BIN:/usr/local/go/bin:$PATH
export GOFLAGS=-buildvcs=false

log() { printf '[install-deps] %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
  echo "install-deps: must run as root (it installs packages and binaries)" >&2
  exit 1
fi

apt_updated=
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ -z "$apt_updated" ]; then
    apt-get update -qq
    apt_updated=1
  fi
  log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# --- CRIU from Debian forky, pinned so nothing else moves --------------------
# bookworm's CRIU 3.17 does not start on recent kernels and trixie's 4.1 cannot
# dump TCP sockets there; forky's 4.2.x works. It needs trixie's libc6.
install_criu() {
  if command -v criu >/dev/null && criu --version 2>/dev/null | grep -q "Version: ${CRIU_MIN_VERSION}"; then
    return 0
  fi
  local uri
  uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$uri" ] || uri=http://deb.debian.org/debian
  cat > /etc/apt/sources.list.d/snapboot-criu.sources <<SRC
Types: deb
URIs: $uri
Suites: trixie forky
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  cat > /etc/apt/preferences.d/snapboot-criu <<PREF
Package: *
Pin: release n=trixie
Pin-Priority: 100

Package: *
Pin: release n=forky
Pin-Priority: 50

Package: criu libcompel1 libnet9 libnl-3-200 python3-criu crit
Pin: release n=forky
Pin-Priority: 990
PREF
  apt-get update -qq
  apt_updated=1
  log "apt-get install criu (forky)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -t forky criu libcompel1 libnet9 libnl-3-200 >/dev/null
  criu --version | grep -q "Version: ${CRIU_MIN_VERSION}" || { echo "install-deps: criu is not ${CRIU_MIN_VERSION}.x" >&2; criu --version >&2; exit 1; }
}

# has_version BINARY WANT [VERSION-ARGS...]: BINARY's version output (of
# --version, or of VERSION-ARGS) names WANT. The output is read whole, not
# piped into grep -q: with pipefail, a binary that writes on after grep has
# matched and gone dies of SIGPIPE, and the check would fail at random.
has_version() {
  local bin=$1 want=$2; shift 2
  [ $# -gt 0 ] || set -- --version
  local out
  [ -x "$BIN/$bin" ] && out=$("$BIN/$bin" "$@" 2>/dev/null) && [[ $out == *"${want#v}"* ]]
}

# go_install BINARY WANT PKG@VERSION [build flags]: go install PKG unless
# BINARY is already WANT (VERSION_ARGS: how BINARY prints its version).
go_install() {
  local bin=$1 want=$2 pkg=$3; shift 3
  if has_version "$bin" "$want" ${VERSION_ARGS:-}; then
    return 0
  fi
  log "go install $pkg"
  go install "$@" "$pkg"
}

apt_install ca-certificates iptables nftables libseccomp-dev pkg-config busybox-static iproute2 zstd lz4 tar curl
install_criu

go_install containerd "$CONTAINERD_VERSION" "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" &
p1=$!
go_install runc "$RUNC_VERSION" "github.com/opencontainers/runc@$RUNC_VERSION" -tags seccomp &
p2=$!
wait $p1; wait $p2
go_install ctr "$CONTAINERD_VERSION" "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION"
if ! has_version containerd-shim-runc-v2 "$CONTAINERD_VERSION" -v; then
  log "go install containerd-shim-runc-v2"
  go install "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION"
fi
go_install registry "$REGISTRY_VERSION" "github.com/distribution/distribution/v3/cmd/registry@$REGISTRY_VERSION"
VERSION_ARGS=version go_install oras "$ORAS_VERSION" "oras.land/oras/cmd/oras@$ORAS_VERSION"

# --- nerdctl from its Go module zip --------------------------------------------
# `go install nerdctl@version` cannot take it here: the proxy refuses the
# module's version list, which go install reads for deprecations. And its
# cmd/nerdctl/helpers/testing_linux.go, a helper for nerdctl's own tests,
# imports its test framework (mod/tigron), a module of its own that the
# proxy does not serve. So: the module's zip (checked against go.sum's
# database like any module), built without that one test helper.
install_nerdctl() {
  if [ -x "$BIN/nerdctl" ] && "$BIN/nerdctl" --version 2>/dev/null | grep -qx "nerdctl version ${NERDCTL_VERSION#v}"; then
    return 0
  fi
  local mod src
  mod=$(cd / && go mod download -json "github.com/containerd/nerdctl/v2@$NERDCTL_VERSION" | awk -F'"' '/"Dir":/{print $4}')
  [ -d "$mod" ] || { echo "install-deps: could not download nerdctl $NERDCTL_VERSION" >&2; exit 1; }
  src=$(mktemp -d)
  log "go build nerdctl $NERDCTL_VERSION (without its test helper)"
  # In a subshell whose exit, however it ends, removes the copy.
  (
    trap 'rm -rf "$src"' EXIT
    cp -r "$mod"/. "$src"
    chmod -R u+w "$src"
    rm "$src/cmd/nerdctl/helpers/testing_linux.go"
    cd "$src"
    go mod edit -droprequire=github.com/containerd/nerdctl/mod/tigron -dropreplace=github.com/containerd/nerdctl/mod/tigron@v0.0.0
    go build -ldflags "-X github.com/containerd/nerdctl/v2/pkg/version.Version=$NERDCTL_VERSION" -o "$BIN/nerdctl" ./cmd/nerdctl
  )
  "$BIN/nerdctl" --version | grep -qx "nerdctl version ${NERDCTL_VERSION#v}" || {
    echo "install-deps: $BIN/nerdctl does not report ${NERDCTL_VERSION}" >&2
    exit 1
  }
}
install_nerdctl

# CRI (Kubernetes path) test extras: CNI plugins and crictl.
bash "$(dirname "$0")/install-cri-deps.sh"

# The demo's extras: PostgreSQL for the app, debootstrap for its image.
# PostgreSQL needs locales, which (with libc-l10n) must be the version of the libc6 CRIU
# brought from forky: bookworm's locales wants bookworm's libc-bin, and apt
# would give up ("held broken packages") on a machine without locales.
if [ "${SNAPBOOT_DEMO_DEPS:-}" = 1 ]; then
  if ! dpkg-query -W -f='${Status}' locales 2>/dev/null | grep -q 'install ok installed'; then
    libc_version=$(dpkg-query -W -f='${Version}' libc6)
    log "apt-get install locales=$libc_version (the libc6's)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "locales=$libc_version" "libc-l10n=$libc_version" >/dev/null
  fi
  apt_install postgresql debootstrap
fi

log "ok: containerd $("$BIN/containerd" --version | awk '{print $3}'), runc $("$BIN/runc" --version | awk 'NR==1{print $3}'), criu $(criu --version | awk '/Version/{print $2}'), registry $("$BIN/registry" --version | awk '{print $3}'), oras $("$BIN/oras" version | awk '/Version/{print $2}'), $("$BIN/nerdctl" --version)"
