#!/usr/bin/env bash
# CNI plugins and crictl for the CRI (Kubernetes path) integration test
# (integration/cri_test.go). Called by hack/install-deps.sh; runs on its own too.
# Idempotent and pinned: what is already there at the right version is kept.
#
#   containernetworking-plugins 1.1.1 (Debian bookworm's package): bridge,
#       host-local, loopback, portmap, ... in /usr/lib/cni (Debian's path, not
#       /opt/cni/bin). They speak CNI spec up to 1.0.0.
#   crictl v1.37.0, built from its Go module (sigs.k8s.io/cri-tools): the same
#       CRI API (k8s.io/cri-api v0.37.0) as containerd v2.4.2. Its release
#       tarballs are not reachable here; the module proxy is.
set -euo pipefail

CNI_PLUGINS_VERSION=1.1.1
CRICTL_VERSION=v1.37.0

BIN=${SNAPBOOT_TOOLS_BIN:-/usr/local/bin}
export GOBIN=$BIN
export PATH=$BIN:/usr/local/go/bin:$PATH
export GOFLAGS=-buildvcs=false

log() { printf '[install-cri-deps] %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
  echo "install-cri-deps: must run as root (it installs packages and binaries)" >&2
  exit 1
fi

# --- CNI plugins from Debian --------------------------------------------------
installed_cni=$(dpkg-query -W -f='${Status} ${Version}' containernetworking-plugins 2>/dev/null || true)
case $installed_cni in
  "install ok installed ${CNI_PLUGINS_VERSION}"*) ;;
  *)
    apt-get update -qq
    # The pinned upstream version, whatever Debian revision (+ds1-3+bN) the
    # archive carries now (bookworm; trixie has the same upstream version).
    deb_version=$(apt-cache madison containernetworking-plugins | awk -v v="$CNI_PLUGINS_VERSION" '$3 ~ "^"v"[+-]" {print $3; exit}')
    if [ -z "$deb_version" ]; then
      echo "install-cri-deps: no containernetworking-plugins ${CNI_PLUGINS_VERSION} in the apt sources:" >&2
      apt-cache madison containernetworking-plugins >&2 || true
      exit 1
    fi
    log "apt-get install containernetworking-plugins=$deb_version"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "containernetworking-plugins=$deb_version" >/dev/null
    ;;
esac
for p in bridge host-local loopback; do
  [ -x "/usr/lib/cni/$p" ] || { echo "install-cri-deps: /usr/lib/cni/$p is missing after installing containernetworking-plugins" >&2; exit 1; }
done

# --- crictl from its Go module ------------------------------------------------
# The module has no version baked in unless it is set at link time; then
# `crictl --version` prints "crictl version v1.37.0".
if [ -x "$BIN/crictl" ] && "$BIN/crictl" --version 2>/dev/null | grep -qx "crictl version ${CRICTL_VERSION}"; then
  :
else
  log "go install sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
  go install -ldflags "-X sigs.k8s.io/cri-tools/pkg/version.Version=${CRICTL_VERSION}" \
    "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
  "$BIN/crictl" --version | grep -qx "crictl version ${CRICTL_VERSION}" || {
    echo "install-cri-deps: $BIN/crictl does not report ${CRICTL_VERSION}" >&2
    exit 1
  }
fi

log "ok: containernetworking-plugins $(dpkg-query -W -f='${Version}' containernetworking-plugins) in /usr/lib/cni, $("$BIN/crictl" --version)"
