#!/usr/bin/env bash
# Installs snapboot on the node this runs on; the DaemonSet's init container
# (deploy/daemonset.yaml) runs it, privileged, with hostPID and the host's
# /usr/local/bin, /etc/containerd and /etc/snapboot mounted under $HOST_ROOT.
#
#  1. checks that the node has CRIU >= 4.2 and containerd 2.x (nothing is
#     changed on a node without them, unless SNAPBOOT_SKIP_CRIU_CHECK=true);
#  2. installs containerd-shim-snapboot-v1 and snapboot into /usr/local/bin;
#  3. writes /etc/snapboot/config.toml from the ConfigMap, once
#     `snapboot config check` has parsed it;
#  4. unless containerd already has a `snapboot` CRI runtime: writes the
#     drop-in /etc/containerd/conf.d/snapboot.toml, imports it from
#     /etc/containerd/config.toml, checks the result with
#     `containerd config dump`, and restarts containerd (systemd);
#  5. with SNAPBOOT_LABEL_NODE=true (the DaemonSet's setting), labels the
#     node snapboot.dev/node=true through the API server, once containerd
#     runs with the runtime: the RuntimeClass schedules pods by that label
#     (deploy/rbac.yaml allows it);
#  6. sleeps, unless SNAPBOOT_SLEEP=false (the DaemonSet runs it as an init
#     container, which must end).
#
# Idempotent: what is in place already is left alone, and containerd is
# restarted only when its configuration changed. Host commands run in the
# host's mount namespace (nsenter into PID 1), as kata-deploy does.
#
# `install.sh uninstall` removes the node's label (SNAPBOOT_LABEL_NODE=true),
# the drop-in and its import, the binaries and the node config, and restarts
# containerd; pods of the snapboot runtime class must be gone first.
set -euo pipefail
shopt -s inherit_errexit

HOST_ROOT=${HOST_ROOT-/host}                 # where the host's directories are mounted
SRC=${SNAPBOOT_SRC:-/snapboot}               # binaries and containerd-config.toml in the image
NODE_CONFIG_SRC=${SNAPBOOT_NODE_CONFIG_SRC:-/config/config.toml}   # the ConfigMap
BIN_DIR=${SNAPBOOT_BIN_DIR:-/usr/local/bin}  # host paths from here on
NODE_CONFIG=${SNAPBOOT_NODE_CONFIG:-/etc/snapboot/config.toml}
CONTAINERD_CONFIG=${SNAPBOOT_CONTAINERD_CONFIG:-/etc/containerd/config.toml}
DROPIN=${SNAPBOOT_CONTAINERD_DROPIN:-/etc/containerd/conf.d/snapboot.toml}
CRIU_MIN=${SNAPBOOT_CRIU_MIN:-4.2}
SKIP_CRIU_CHECK=${SNAPBOOT_SKIP_CRIU_CHECK:-false}
RESTART=${SNAPBOOT_RESTART_CONTAINERD:-true}
CONTAINERD_UNIT=${SNAPBOOT_CONTAINERD_UNIT:-containerd}
NODE=${NODE_NAME:-$(uname -n)}
LABEL_NODE=${SNAPBOOT_LABEL_NODE:-false}
NODE_LABEL=${SNAPBOOT_NODE_LABEL:-snapboot.dev/node}   # the RuntimeClass's nodeSelector
SA_DIR=${SNAPBOOT_SERVICEACCOUNT_DIR:-/var/run/secrets/kubernetes.io/serviceaccount}

# host_exec runs a command in the host's mount namespace (its binaries, its
# /etc). SNAPBOOT_HOST_EXEC overrides the prefix ("" runs it right here).
read -r -a HOST_EXEC <<<"${SNAPBOOT_HOST_EXEC-nsenter --target 1 --mount --}"
host_exec() { "${HOST_EXEC[@]}" "$@"; }

log() { printf '[snapboot-install] %s: %s\n' "$NODE" "$*"; }
die() {
  printf '[snapboot-install] %s: ERROR: %s\n' "$NODE" "$*" >&2
  exit 1
}

# version_ge A B: A >= B for dotted versions.
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

check_criu() {
  local out v
  if ! out=$(host_exec criu --version 2>&1); then
    criu_problem "CRIU is not installed on this node (\`criu --version\` failed: ${out:-no output})"
    return
  fi
  v=$(printf '%s\n' "$out" | awk '/^Version:/ {print $2; exit}')
  if [ -z "$v" ]; then
    criu_problem "cannot read CRIU's version from \`criu --version\`: $out"
  elif ! version_ge "$v" "$CRIU_MIN"; then
    criu_problem "CRIU $v is too old: snapboot needs CRIU >= $CRIU_MIN (older ones fail on recent kernels and on TCP sockets)"
  else
    log "CRIU $v"
  fi
}

criu_problem() {
  if [ "$SKIP_CRIU_CHECK" = true ]; then
    log "WARNING: $1. Installing anyway (SNAPBOOT_SKIP_CRIU_CHECK=true): restores will cold-start on this node."
    return
  fi
  die "$1.
  Nothing was changed on this node. Install CRIU >= $CRIU_MIN on it (Debian: the criu package
  of trixie-backports or forky; Ubuntu: ppa:criu/ppa), then delete this pod to retry;
  or set SNAPBOOT_SKIP_CRIU_CHECK=true in the DaemonSet to install without restores."
}

check_containerd() {
  local out v
  out=$(host_exec containerd --version 2>&1) || die "containerd is not on the node's PATH (\`containerd --version\`: $out)"
  v=$(printf '%s\n' "$out" | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^v?[0-9]+\.[0-9]+/) {print $i; exit}}')
  v=${v#v}
  case $v in
    2.*) log "containerd $v" ;;
    *) die "containerd ${v:-of unknown version} found: this installer needs containerd 2.x (config version 3 drop-ins). Configure the runtime by hand: README.md, Kubernetes." ;;
  esac
}

# install_file SRC HOSTPATH MODE: atomic replace (running shims keep the old
# inode); nothing when the content is the same. Prints "changed" if it wrote.
install_file() {
  local src=$1 dst=$HOST_ROOT$2 mode=$3
  if [ -f "$dst" ] && cmp -s "$src" "$dst"; then
    return 0
  fi
  mkdir -p "$(dirname "$dst")"
  cp "$src" "$dst.snapboot-new"
  chmod "$mode" "$dst.snapboot-new"
  mv -f "$dst.snapboot-new" "$dst"
  echo changed
}

containerd_dump() { host_exec containerd --config "$CONTAINERD_CONFIG" config dump 2>&1; }

has_snapboot_runtime() {
  grep -q "runtimes\.snapboot\]" <<<"$1" && grep -q "io\.containerd\.snapboot\.v1" <<<"$1"
}

# runc_uses_systemd_cgroup DUMP: the CRI runtime `runc` of a `containerd
# config dump` has SystemdCgroup = true.
runc_uses_systemd_cgroup() {
  awk '
    /^[[:space:]]*\[/ { in_runc = ($0 ~ /runtimes\.runc\.options\]/) }
    in_runc && /^[[:space:]]*SystemdCgroup[[:space:]]*=[[:space:]]*true/ { found = 1 }
    END { exit !found }' <<<"$1"
}

# imports_covers FILE: the top-level imports of FILE include $DROPIN (by
# path or glob), as containerd resolves them (resolveImports): the entry
# cleaned (Go's filepath.Clean), a relative one taken from FILE's
# directory, and matched as a glob (Go's filepath.Glob: `*`, `?` and `[`
# do not match `/`) only if it holds a `*`; otherwise it is a path.
imports_covers() {
  local line entry
  line=$(grep -E '^[[:space:]]*imports[[:space:]]*=' "$1" | head -n1) || return 1
  while read -r entry; do
    entry=${entry//\"/}
    entry=${entry//\'/}
    case $entry in
      /*) ;;
      *) entry=$(dirname "${1#"$HOST_ROOT"}")/$entry ;;
    esac
    entry=$(clean_path "$entry")
    case $entry in
      *'*'*) glob_matches_path "$entry" "$DROPIN" && return 0 ;;
      *) [ "$entry" = "$DROPIN" ] && return 0 ;;
    esac
  done < <(grep -oE "\"[^\"]*\"|'[^']*'" <<<"$line")
  return 1
}

# clean_path PATH: the absolute PATH as Go's filepath.Clean makes it (no
# empty or `.` elements, `..` taken back).
clean_path() {
  local -a parts out=()
  local p
  IFS=/ read -ra parts <<<"$1"
  for p in "${parts[@]}"; do
    case $p in
      '' | .) ;;
      ..) [ "${#out[@]}" -eq 0 ] || unset 'out[${#out[@]}-1]' ;;
      *) out+=("$p") ;;
    esac
  done
  local IFS=/
  printf '/%s\n' "${out[*]}"
}

# glob_matches_path GLOB PATH: GLOB matches PATH element by element.
glob_matches_path() {
  local -a globs paths
  local i
  IFS=/ read -ra globs <<<"$1"
  IFS=/ read -ra paths <<<"$2"
  [ "${#globs[@]}" -eq "${#paths[@]}" ] || return 1
  for i in "${!globs[@]}"; do
    # shellcheck disable=SC2053 # the element may be a glob
    [[ ${paths[$i]} == ${globs[$i]} ]] || return 1
  done
  return 0
}

# add_import: makes $CONTAINERD_CONFIG import $DROPIN. Prints "changed" if
# it edited (or created) the file.
add_import() {
  local cfg=$HOST_ROOT$CONTAINERD_CONFIG
  if [ ! -e "$cfg" ]; then
    # containerd ran on its defaults: keep them, plus the drop-in.
    mkdir -p "$(dirname "$cfg")"
    printf 'version = 3\nimports = ["%s"]\n' "$DROPIN" >"$cfg"
    echo changed
    return 0
  fi
  if imports_covers "$cfg"; then
    return 0
  fi
  [ -e "$cfg.snapboot-orig" ] || cp -p "$cfg" "$cfg.snapboot-orig"
  if grep -qE '^[[:space:]]*imports[[:space:]]*=' "$cfg"; then
    if ! grep -qE '^[[:space:]]*imports[[:space:]]*=.*\]' "$cfg"; then
      die "$CONTAINERD_CONFIG has an \`imports\` array over several lines; add \"$DROPIN\" to it by hand"
    fi
    # TOML allows a trailing comma, so `imports = []` works too.
    sed -i -E "0,/^([[:space:]]*imports[[:space:]]*=[[:space:]]*\[)/s||\1\"$DROPIN\", |" "$cfg"
  else
    # A top-level key must come before the first table: put it first.
    sed -i "1i imports = [\"$DROPIN\"]" "$cfg"
  fi
  echo changed
}

# restart_containerd restarts containerd; it returns 1 (and says why) when
# it did not, so that containerd still runs without the runtime.
restart_containerd() {
  if [ "$RESTART" != true ]; then
    log "containerd's configuration changed; restart containerd on this node to load the snapboot runtime (SNAPBOOT_RESTART_CONTAINERD=$RESTART)"
    return 1
  fi
  if ! host_exec systemctl is-active --quiet "$CONTAINERD_UNIT" 2>/dev/null; then
    log "WARNING: containerd is not the active systemd unit $CONTAINERD_UNIT here; restart containerd yourself to load the snapboot runtime"
    return 1
  fi
  log "restarting $CONTAINERD_UNIT (running containers keep running)"
  # Called where errexit does not hold (if, ||): a failure must end here.
  host_exec systemctl restart "$CONTAINERD_UNIT" || die "systemctl restart $CONTAINERD_UNIT failed: journalctl -u $CONTAINERD_UNIT on the node"
  local _
  for _ in $(seq 1 60); do
    if host_exec systemctl is-active --quiet "$CONTAINERD_UNIT"; then
      log "containerd is back"
      return 0
    fi
    sleep 1
  done
  die "containerd did not come back within 60s after the restart: journalctl -u $CONTAINERD_UNIT on the node"
}

# containerd_loaded FILE...: whether the running containerd (the systemd
# unit's main process) started after each FILE was last written, and so has
# loaded them. Returns 0 if it did, 1 if it did not (it is older than a
# file), 2 if it cannot tell (no such unit, or its process is gone).
containerd_loaded() {
  local pid stat start_ticks hz btime started f
  pid=$(host_exec systemctl show -p MainPID --value "$CONTAINERD_UNIT" 2>/dev/null) || return 2
  [[ $pid =~ ^[0-9]+$ ]] && [ "$pid" != 0 ] || return 2
  read -r stat <"/proc/$pid/stat" 2>/dev/null || return 2
  stat=${stat##*) }                                  # the fields after the command name
  start_ticks=$(awk '{print $20}' <<<"$stat")       # field 22, starttime
  hz=$(getconf CLK_TCK 2>/dev/null) || return 2
  btime=$(awk '$1 == "btime" {print $2}' /proc/stat 2>/dev/null) || return 2
  [[ $start_ticks =~ ^[0-9]+$ && $hz =~ ^[1-9][0-9]*$ && $btime =~ ^[0-9]+$ ]] || return 2
  started=$((btime + start_ticks / hz))
  # Both are whole seconds (btime truncated, the start rounded down), so
  # the true start is started or the second after: a file written in that
  # second counts as loaded.
  for f in "$@"; do
    [ -e "$f" ] || continue
    [ "$(stat -c %Y "$f")" -le $((started + 1)) ] || return 1
  done
  return 0
}

# label_if_loaded FILE...: labels the node if containerd has loaded FILE...
# (containerd_loaded); otherwise says why not. Returns 0 either way.
label_if_loaded() {
  [ "$LABEL_NODE" = true ] || return 0
  local rc=0
  containerd_loaded "$@" || rc=$?
  case $rc in
    0) label_node true ;;
    1) log "containerd has not been restarted since its configuration was written: the node is not labelled $NODE_LABEL=true. Restart containerd, then delete this pod (the DaemonSet makes a new one, which labels the node)" ;;
    *) log "WARNING: cannot tell whether containerd runs with the snapboot runtime (no main process for the systemd unit $CONTAINERD_UNIT; set SNAPBOOT_CONTAINERD_UNIT): the node is not labelled $NODE_LABEL=true. Once containerd runs with it, label the node by hand (kubectl label node $NODE $NODE_LABEL=true)" ;;
  esac
}

# check_label_access: what label_node needs is there (checked before
# anything is changed).
check_label_access() {
  [ -n "${NODE_NAME:-}" ] || die "SNAPBOOT_LABEL_NODE=true needs NODE_NAME (the downward API's spec.nodeName)"
  if [ ! -r "$SA_DIR/token" ] || [ ! -r "$SA_DIR/ca.crt" ] || [ -z "${KUBERNETES_SERVICE_HOST:-}" ]; then
    die "SNAPBOOT_LABEL_NODE=true, but this pod has no service account token in $SA_DIR or no KUBERNETES_SERVICE_HOST; nothing was changed. Apply deploy/rbac.yaml and mount the token as deploy/daemonset.yaml does, or set SNAPBOOT_LABEL_NODE=false and label the node by hand (kubectl label node $NODE_NAME $NODE_LABEL=true)"
  fi
}

# label_node VALUE: sets the node's $NODE_LABEL to "true", or removes it
# (VALUE null), through the API server with the pod's service account
# (deploy/rbac.yaml). The token goes to curl on its standard input, not on
# its command line (the pod shares the node's PID namespace).
label_node() {
  local value=$1 token host body out answer
  check_label_access
  token=$(<"$SA_DIR/token")
  host=$KUBERNETES_SERVICE_HOST
  [[ $host != *:* ]] || host="[$host]"             # IPv6
  if [ "$value" = null ]; then body="{\"metadata\":{\"labels\":{\"$NODE_LABEL\":null}}}"; else body="{\"metadata\":{\"labels\":{\"$NODE_LABEL\":\"true\"}}}"; fi
  answer=$(mktemp)
  if ! out=$(printf 'header = "Authorization: Bearer %s"\n' "$token" |
    curl --config - --silent --show-error --fail-with-body --max-time 30 --retry 3 \
      --cacert "$SA_DIR/ca.crt" --request PATCH \
      --header 'Content-Type: application/merge-patch+json' --data "$body" \
      --output "$answer" \
      "https://$host:${KUBERNETES_SERVICE_PORT:-443}/api/v1/nodes/$NODE_NAME" 2>&1); then
    out="$out; the API server answered: $(head -c 2048 "$answer")"
    rm -f "$answer"
    die "could not label node $NODE_NAME through the API server ($out). Does the service account have deploy/rbac.yaml's ClusterRole (nodes: patch), and does deploy/own-node-policy.yaml allow it? Or set SNAPBOOT_LABEL_NODE=false and label the node by hand"
  fi
  rm -f "$answer"
  if [ "$value" = null ]; then
    log "removed the label $NODE_LABEL from node $NODE_NAME"
  else
    log "labelled node $NODE_NAME $NODE_LABEL=true: the snapboot RuntimeClass schedules pods here"
  fi
}

install() {
  check_criu
  check_containerd
  [ "$LABEL_NODE" != true ] || check_label_access

  local changed check
  for b in containerd-shim-snapboot-v1 snapboot; do
    [ -x "$SRC/$b" ] || die "$SRC/$b is missing from the installer image"
  done
  # A node configuration the shim cannot parse would make every restore
  # on the node cold-start: checked before anything is installed.
  if [ -f "$NODE_CONFIG_SRC" ]; then
    check=$("$SRC/snapboot" --config "$NODE_CONFIG_SRC" config check 2>&1) ||
      die "the ConfigMap's node configuration is not valid, nothing was installed: $check"
    log "$check"
  fi
  local dump
  dump=$(containerd_dump) || die "\`containerd config dump\` fails on this node before any change; nothing was installed:
$dump"
  for b in containerd-shim-snapboot-v1 snapboot; do
    changed=$(install_file "$SRC/$b" "$BIN_DIR/$b" 0755)
    [ -z "$changed" ] || log "installed $BIN_DIR/$b"
  done
  if [ -f "$NODE_CONFIG_SRC" ]; then
    changed=$(install_file "$NODE_CONFIG_SRC" "$NODE_CONFIG" 0644)
    [ -z "$changed" ] || log "wrote $NODE_CONFIG"
  else
    log "no node config at $NODE_CONFIG_SRC (ConfigMap): the shim's defaults deny every restore"
  fi

  if has_snapboot_runtime "$dump" && [ ! -e "$HOST_ROOT$DROPIN" ]; then
    log "containerd already has a snapboot runtime (configured outside $DROPIN); leaving its configuration alone"
    label_if_loaded "$HOST_ROOT$CONTAINERD_CONFIG"
    return 0
  fi

  local cfg=$HOST_ROOT$CONTAINERD_CONFIG had_cfg=false had_dropin=false
  [ -e "$cfg" ] && had_cfg=true && cp -p "$cfg" "$cfg.snapboot-tmp"
  [ -e "$HOST_ROOT$DROPIN" ] && had_dropin=true && cp -p "$HOST_ROOT$DROPIN" "$HOST_ROOT$DROPIN.snapboot-tmp"
  # The drop-in; on a node whose runc runtime uses the systemd cgroup driver
  # (kubelet's cgroupDriver: systemd), snapboot's must too.
  local dropin_src=$SRC/containerd-config.toml
  if runc_uses_systemd_cgroup "$dump"; then
    dropin_src=$(mktemp)
    cat "$SRC/containerd-config.toml" - >"$dropin_src" <<EOF

  # Added by install.sh: the node's runc runtime has SystemdCgroup = true.
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.snapboot.options]
    SystemdCgroup = true
EOF
    log "runc uses the systemd cgroup driver here: so will snapboot"
  fi
  local c1 c2
  c1=$(install_file "$dropin_src" "$DROPIN" 0644)
  [ "$dropin_src" = "$SRC/containerd-config.toml" ] || rm -f "$dropin_src"
  c2=$(add_import)
  if [ -z "$c1$c2" ]; then
    rm -f "$cfg.snapboot-tmp" "$HOST_ROOT$DROPIN.snapboot-tmp"
    log "containerd's configuration is up to date"
    # An earlier run may have written it without a restart.
    label_if_loaded "$cfg" "$HOST_ROOT$DROPIN"
    return 0
  fi
  if ! dump=$(containerd_dump) || ! has_snapboot_runtime "$dump"; then
    # Put everything back as it was, and leave containerd running as it is.
    if $had_cfg; then mv -f "$cfg.snapboot-tmp" "$cfg"; else rm -f "$cfg"; fi
    if $had_dropin; then mv -f "$HOST_ROOT$DROPIN.snapboot-tmp" "$HOST_ROOT$DROPIN"; else rm -f "$HOST_ROOT$DROPIN"; fi
    die "containerd's configuration with the snapboot runtime does not check out; changes undone:
$dump"
  fi
  rm -f "$cfg.snapboot-tmp" "$HOST_ROOT$DROPIN.snapboot-tmp"
  [ -z "$c1" ] || log "wrote $DROPIN"
  [ -z "$c2" ] || log "$CONTAINERD_CONFIG imports $DROPIN"
  if restart_containerd; then
    [ "$LABEL_NODE" != true ] || label_node true
  elif [ "$LABEL_NODE" = true ]; then
    log "the node is not labelled $NODE_LABEL=true until containerd runs with the runtime: restart containerd, then delete this pod (the DaemonSet makes a new one, which labels the node)"
  fi
}

uninstall() {
  local cfg=$HOST_ROOT$CONTAINERD_CONFIG changed=
  # First, so that no new snapboot pod is scheduled here.
  if [ "$LABEL_NODE" = true ]; then
    label_node null
  fi
  if [ -e "$HOST_ROOT$DROPIN" ]; then
    rm -f "$HOST_ROOT$DROPIN"
    changed=1
  fi
  if [ -e "$cfg" ] && grep -qF "\"$DROPIN\"" "$cfg"; then
    sed -i -E -e "s|\"${DROPIN}\",?[[:space:]]*||" -e '/^[[:space:]]*imports[[:space:]]*=[[:space:]]*\[[[:space:]]*\][[:space:]]*$/d' "$cfg"
    changed=1
  fi
  rm -f "$HOST_ROOT$BIN_DIR/containerd-shim-snapboot-v1" "$HOST_ROOT$BIN_DIR/snapboot" "$HOST_ROOT$NODE_CONFIG"
  log "removed the binaries, $NODE_CONFIG and the containerd drop-in (the cache under /var/lib/snapboot stays)"
  if [ -n "$changed" ]; then
    restart_containerd || true
  fi
}

case ${1:-install} in
  install)
    install
    if [ "$LABEL_NODE" = true ]; then
      log "done"
    else
      log "done: snapboot is installed; label the node $NODE_LABEL=true (the RuntimeClass's) once containerd runs with it, if it is not yet"
    fi
    ;;
  uninstall)
    uninstall
    exit 0
    ;;
  *)
    echo "usage: $0 [install|uninstall]" >&2
    exit 2
    ;;
esac

if [ "${SNAPBOOT_SLEEP:-true}" = true ]; then
  # Keep the pod running (and its log readable) until the DaemonSet goes.
  trap 'exit 0' TERM INT
  sleep infinity &
  wait
fi
