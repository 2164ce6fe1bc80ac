#!/bin/bash
# build.sh builds the snapboot demo image: Debian trixie (debootstrap, no
# Docker) with Ruby, Rails 7.2, puma and ruby-pg from Debian's archive, and a
# generated "fat" Rails app in /app (demo/app/generate.rb). The result is an
# OCI image layout tar that `ctr images import` names NAME.
#
#   demo/image/build.sh [--models N] --out /path/image.oci.tar [--name NAME]
#                       [--cache-dir DIR] [--compression none|zstd] [--no-image-cache]
#
# Caches, under --cache-dir (default /var/cache/snapboot-demo):
#   base-KEY.tar.zst      the trimmed debootstrap rootfs; KEY hashes the suite,
#                         variant, package list and trimming recipe
#   images/HASH.oci.tar   finished images; HASH covers the base KEY, N, NAME,
#                         compression, generate.rb and this script
# The image is reproducible: the same inputs give the same digests.
# See demo/image/README.md.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GENERATOR="$SCRIPT_DIR/../app/generate.rb"

SUITE=trixie
VARIANT=minbase
PACKAGES=ruby,ruby-rails,puma,ruby-pg,ca-certificates,tzdata,curl
# Bump when the trimming of the base rootfs changes (part of the cache key).
BASE_RECIPE=1
# Fixed timestamps: reproducible layers and configs.
EPOCH=1735689600 # 2025-01-01T00:00:00Z
CREATED=2025-01-01T00:00:00Z
# Not a secret: a fixed demo value, so that restored and cold containers agree.
SECRET_KEY_BASE=$(printf 'snapboot-demo-secret-key-base' | sha256sum | cut -c1-64)$(printf 'snapboot-demo' | sha256sum | cut -c1-64)

models=3200 # 2800 went down to 15.07 s to the first HTTP 200 on a fast day (2400 to 14.74 s, 2000 to 14.35 s); 200 boots in ~6 s
out=""
name=""
cache_dir=/var/cache/snapboot-demo
compression=none
image_cache=1
mirror=${SNAPBOOT_DEMO_MIRROR:-}

die() { echo "build.sh: error: $*" >&2; exit 1; }
log() { echo "build.sh: $*" >&2; }
usage() {
	cat >&2 <<EOF
usage: $0 [--models N] --out PATH.oci.tar [--name NAME] [--cache-dir DIR]
          [--compression none|zstd] [--mirror URL] [--no-image-cache]

  --models N        number of generated Rails models (1..99999, default 3200);
                    YAML settings, initializers, locales and routes scale with it
  --out PATH        where to write the OCI image layout tar
  --name NAME       image name for 'ctr images import'
                    (default localhost/snapboot-demo/rails:N)
  --cache-dir DIR   base rootfs and image cache (default /var/cache/snapboot-demo)
  --compression C   layer compression: none (default, fastest import) or zstd
  --mirror URL      Debian mirror (default: the one in /etc/apt sources, else
                    http://deb.debian.org/debian)
  --no-image-cache  rebuild the image even if an identical one is cached
EOF
	exit 2
}

while [ $# -gt 0 ]; do
	case "$1" in
	--models) models=${2:-}; shift 2 || usage ;;
	--models=*) models=${1#*=}; shift ;;
	--out) out=${2:-}; shift 2 || usage ;;
	--out=*) out=${1#*=}; shift ;;
	--name) name=${2:-}; shift 2 || usage ;;
	--name=*) name=${1#*=}; shift ;;
	--cache-dir) cache_dir=${2:-}; shift 2 || usage ;;
	--cache-dir=*) cache_dir=${1#*=}; shift ;;
	--compression) compression=${2:-}; shift 2 || usage ;;
	--compression=*) compression=${1#*=}; shift ;;
	--mirror) mirror=${2:-}; shift 2 || usage ;;
	--mirror=*) mirror=${1#*=}; shift ;;
	--no-image-cache) image_cache=0; shift ;;
	-h | --help) usage ;;
	*) echo "build.sh: unknown argument: $1" >&2; usage ;;
	esac
done

[[ "$models" =~ ^[1-9][0-9]{0,4}$ ]] || die "--models N must be 1..99999 (got '${models}')"
[ -n "$out" ] || die "--out PATH is required"
[ -n "$name" ] || name="localhost/snapboot-demo/rails:$models"
# A reference with a tag, and nothing JSON would need escaped.
[[ "$name" =~ ^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._/-][a-z0-9]+)*)*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] ||
	die "--name '$name' is not an image reference with a tag (host/path:tag)"
case "$compression" in none | zstd) ;; *) die "--compression must be none or zstd (got '$compression')" ;; esac
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot, file ownership)"
[ -f "$GENERATOR" ] || die "generator not found: $GENERATOR"
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
mkdir -p "$(dirname "$out")" || die "can't create $(dirname "$out")"
mkdir -p "$cache_dir" || die "can't create cache dir $cache_dir"
cache_dir=$(cd "$cache_dir" && pwd)

t_start=$(date +%s.%N)
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# --------------------------------------------------------------- tools

apt_install() {
	log "installing $* with apt-get"
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1; then
		DEBIAN_FRONTEND=noninteractive apt-get update >/dev/null 2>&1 || true
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null ||
			die "apt-get install $* failed"
	fi
}
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v zstd >/dev/null || need+=(zstd)
command -v flock >/dev/null || need+=(util-linux)
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
[ -e "/usr/share/debootstrap/scripts/$SUITE" ] ||
	die "this debootstrap ($(debootstrap --version 2>/dev/null)) does not know '$SUITE'"
tar --version | grep -q 'GNU tar' || die "GNU tar is required"

case "$(dpkg --print-architecture 2>/dev/null || uname -m)" in
amd64 | x86_64) arch=amd64 ;;
arm64 | aarch64) arch=arm64 ;;
*) die "unsupported architecture $(uname -m)" ;;
esac

# The mirror that apt uses on this host (deb822 sources or a one-line list).
if [ -z "$mirror" ]; then
	mirror=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' \
		/etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
fi
if [ -z "$mirror" ]; then
	mirror=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' \
		/etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -1)
fi
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian

# One build at a time per cache dir.
exec 9>"$cache_dir/.lock"
flock 9

# The work dir is a private tmpfs when possible: creating files on this kind
# of VM's ext4 costs ~1 ms each (extracting the 11,000-file base takes 12 s
# there, 0.4 s on tmpfs). SNAPBOOT_DEMO_TMPFS=0 keeps it on disk.
work=$(mktemp -d "$cache_dir/build.XXXXXX")
work_mounted=0
cleanup() {
	# debootstrap can leave /proc or /sys mounted in the target when it fails.
	awk -v w="$work" '$2 == w || index($2, w "/") == 1 { print $2 }' /proc/self/mounts | sort -r |
		while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
if [ "${SNAPBOOT_DEMO_TMPFS:-1}" != 0 ] && mount -t tmpfs -o size=4g,mode=0700 snapboot-demo-build "$work" 2>/dev/null; then
	work_mounted=1
fi

# ---------------------------------------------------------- base rootfs

base_key=$(printf '%s\n' "suite=$SUITE" "variant=$VARIANT" "packages=$PACKAGES" "arch=$arch" "recipe=$BASE_RECIPE" |
	sha256sum | cut -c1-16)
base_tar="$cache_dir/base-$base_key.tar.zst"

build_base() {
	local root="$work/base" t0
	t0=$(date +%s.%N)
	log "debootstrap $SUITE ($VARIANT, $PACKAGES) from $mirror: a minute or so"
	if ! debootstrap --variant="$VARIANT" --arch="$arch" --include="$PACKAGES" \
		"$SUITE" "$root" "$mirror" >"$work/debootstrap.log" 2>&1; then
		tail -n 25 "$work/debootstrap.log" >&2
		[ -f "$root/debootstrap/debootstrap.log" ] && tail -n 25 "$root/debootstrap/debootstrap.log" >&2
		die "debootstrap failed (log above)"
	fi
	log "debootstrap took $(elapsed "$t0") s"
	chroot "$root" /usr/bin/ruby -e 'require "rails"; require "pg"; require "puma"' ||
		die "the debootstrapped rootfs can't load rails, pg and puma"
	# Trim what a container never needs: apt's caches and lists, docs,
	# translations, logs of the install, device nodes (the runtime makes /dev).
	rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin \
		"$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
		"$root"/usr/share/info/* "$root"/usr/share/locale/* "$root"/var/log/* \
		"$root"/var/cache/debconf/*-old "$root"/dev/* "$root"/tmp/* "$root"/run/* "$root"/debootstrap
	printf 'snapboot-demo\n' >"$root/etc/hostname"
	printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
	: >"$root/etc/resolv.conf"
	tar --numeric-owner --format=gnu --sort=name -C "$root" -cf - . |
		zstd -q -T0 -3 -o "$work/base.tar.zst"
	mv "$work/base.tar.zst" "$base_tar"
	rm -rf "$root"
	log "cached base rootfs $base_tar ($(du -h "$base_tar" | cut -f1)) in $(elapsed "$t0") s"
}

if [ -f "$base_tar" ]; then
	log "base rootfs: cached ($base_tar)"
else
	build_base
fi

# --------------------------------------------------------- image cache

compression_suffix=$([ "$compression" = zstd ] && echo "+zstd" || true)
image_key=$( {
	printf '%s\n' "base=$base_key" "models=$models" "name=$name" "compression=$compression" "arch=$arch"
	sha256sum <"$GENERATOR"
	sha256sum <"${BASH_SOURCE[0]}"
} | sha256sum | cut -c1-32)
cached_image="$cache_dir/images/$image_key.oci.tar"

publish() { # copy (or hard-link) the cached image to $out
	# Already the same file (a hard link from an earlier build): nothing to do;
	# mv would refuse to move a file onto itself.
	[ "$out" -ef "$cached_image" ] && return 0
	rm -f "$out.tmp.$$"
	ln "$cached_image" "$out.tmp.$$" 2>/dev/null || cp "$cached_image" "$out.tmp.$$"
	mv -f "$out.tmp.$$" "$out"
}

if [ "$image_cache" = 1 ] && [ -f "$cached_image" ]; then
	publish
	log "image: cached ($cached_image)"
	log "done in $(elapsed "$t_start") s"
	echo "image: $name"
	echo "tar: $out"
	exit 0
fi

# ---------------------------------------------------- rootfs + the app

root="$work/rootfs"
mkdir -p "$root"
t0=$(date +%s.%N)
zstd -q -dc "$base_tar" | tar --numeric-owner -xpf - -C "$root" || die "can't extract $base_tar"
install -m 0644 "$GENERATOR" "$root/tmp/generate.rb"
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
	chroot "$root" /usr/bin/ruby /tmp/generate.rb --models "$models" --out /app ||
	die "generating the app failed"
rm -f "$root/tmp/generate.rb"
# Syntax-check the generated Ruby and make sure the app's config loads.
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 RAILS_ENV=production SECRET_KEY_BASE=x \
	chroot "$root" /usr/bin/ruby -e 'Dir.chdir("/app"); require "/app/config/application"; exit(SnapbootDemo::MODELS == Integer(ARGV[0]))' \
	"$models" || die "the generated app does not load (chroot $root ruby -e 'require \"/app/config/application\"')"
log "rootfs with /app (N=$models) ready in $(elapsed "$t0") s ($([ "$work_mounted" = 1 ] && echo tmpfs || echo disk) work dir)"

# ------------------------------------------------- OCI image layout tar

layout="$work/layout"
blobs="$layout/blobs/sha256"
mkdir -p "$blobs"
t0=$(date +%s.%N)

# put_blob FILE MEDIATYPE: moves FILE into blobs/, prints a descriptor.
put_blob() {
	local file=$1 media=$2 digest size
	digest=$(sha256sum "$file" | cut -d' ' -f1)
	size=$(stat -c %s "$file")
	mv "$file" "$blobs/$digest"
	printf '{"mediaType":"%s","digest":"sha256:%s","size":%s}' "$media" "$digest" "$size"
}
digest_of() { sed -n 's/.*"digest":"\(sha256:[0-9a-f]*\)".*/\1/p' <<<"$1"; }

tar --numeric-owner --format=gnu --sort=name --mtime="@$EPOCH" --clamp-mtime \
	-C "$root" -cf "$work/layer.tar" . || die "tar of the rootfs failed"
diff_id="sha256:$(sha256sum "$work/layer.tar" | cut -d' ' -f1)"
layer_size_raw=$(stat -c %s "$work/layer.tar")
rm -rf "$root"
if [ "$compression" = zstd ]; then
	zstd -q -T0 -3 --rm "$work/layer.tar" -o "$work/layer.tar.zst"
	layer_desc=$(put_blob "$work/layer.tar.zst" "application/vnd.oci.image.layer.v1.tar+zstd")
else
	layer_desc=$(put_blob "$work/layer.tar" "application/vnd.oci.image.layer.v1.tar")
fi

cat >"$work/config.json" <<EOF
{"architecture":"$arch","os":"linux","created":"$CREATED","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","LANG=C.UTF-8","RAILS_ENV=production","RAILS_LOG_LEVEL=info","PORT=3000","SECRET_KEY_BASE=$SECRET_KEY_BASE"],"Cmd":["/usr/bin/puma","-C","/app/config/puma.rb"],"WorkingDir":"/app","ExposedPorts":{"3000/tcp":{}},"StopSignal":"SIGTERM","Labels":{"dev.snapboot.demo.models":"$models","dev.snapboot.demo.debian-suite":"$SUITE"}},"rootfs":{"type":"layers","diff_ids":["$diff_id"]},"history":[{"created":"$CREATED","created_by":"snapboot demo/image/build.sh: debootstrap $SUITE $VARIANT ($PACKAGES) + demo/app/generate.rb --models $models"}]}
EOF
config_desc=$(put_blob "$work/config.json" "application/vnd.oci.image.config.v1+json")

cat >"$work/manifest.json" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":$config_desc,"layers":[$layer_desc],"annotations":{"org.opencontainers.image.title":"snapboot demo Rails app","dev.snapboot.demo.models":"$models"}}
EOF
manifest_desc=$(put_blob "$work/manifest.json" "application/vnd.oci.image.manifest.v1+json")

tag=${name##*:}
cat >"$layout/index.json" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[${manifest_desc%\}},"platform":{"architecture":"$arch","os":"linux"},"annotations":{"io.containerd.image.name":"$name","org.opencontainers.image.ref.name":"$tag"}}]}
EOF
printf '{"imageLayoutVersion":"1.0.0"}\n' >"$layout/oci-layout"

find "$layout" -exec touch -h -d "@$EPOCH" {} +
mkdir -p "$cache_dir/images"
tar --numeric-owner --owner=0 --group=0 --format=gnu --sort=name --mtime="@$EPOCH" \
	-C "$layout" -cf "$cached_image.tmp" oci-layout index.json blobs || die "tar of the OCI layout failed"
mv -f "$cached_image.tmp" "$cached_image"
# Keep the 4 most recent images.
ls -1t "$cache_dir"/images/*.oci.tar 2>/dev/null | tail -n +5 | xargs -r rm -f
publish

log "layer $(digest_of "$layer_desc") ($compression, $((layer_size_raw / 1000000)) MB uncompressed), manifest $(digest_of "$manifest_desc")"
log "OCI tar written in $(elapsed "$t0") s: $out ($(du -h "$out" | cut -f1))"
log "done in $(elapsed "$t_start") s"
echo "image: $name"
echo "tar: $out"
