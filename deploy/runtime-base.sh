#!/usr/bin/env bash
# Builds, without any registry, a local stand-in for the Containerfile's default runtime base
# (gcr.io/distroless/cc-debian12:nonroot): what that image holds and the binary needs, taken
# from this Debian 12 host — glibc's loader, libc, libm, libgcc_s, the CA certificates, an
# nsswitch.conf, /etc/passwd and /etc/group with root and nonroot (65532), /tmp and
# /home/nonroot — imported as one layer. Used by deploy/test-image.sh, which passes it as
# RUNTIME_IMAGE, so CI builds and runs the very runtime stage users get.
#
#   deploy/runtime-base.sh [image name]     (default localhost/wearlink-runtime-base:test)
#   PODMAN="podman --runtime /usr/sbin/runc --cgroup-manager cgroupfs" to choose podman's options
set -euo pipefail
image=${1:-localhost/wearlink-runtime-base:test}
podman=${PODMAN:-podman}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

multiarch=$(gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)
mkdir -p "$root/lib/$multiarch" "$root/lib64" "$root/etc/ssl/certs" "$root/tmp" "$root/home/nonroot" "$root/usr/bin"
for lib in libc.so.6 libm.so.6 libgcc_s.so.1; do
  cp -L "/lib/$multiarch/$lib" "$root/lib/$multiarch/"
done
cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
chmod 1777 "$root/tmp"
chown 65532:65532 "$root/home/nonroot"
cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
cat >"$root/etc/group" <<'GROUP'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
GROUP
echo 'hosts: files dns' >"$root/etc/nsswitch.conf"

tar -C "$root" --numeric-owner -c . | $podman import --quiet \
  --change 'USER 65532:65532' --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
  --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' - "$image" >/dev/null
echo "$image"
