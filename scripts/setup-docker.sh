#!/usr/bin/env bash
# Installs (if absent) and starts a Docker engine, then builds the local test image.
# Idempotent: safe to run before every `make run` / `make test`.
# No registry is reachable here, so images are built from Debian's busybox-static with `docker import`.
set -euo pipefail

IMAGE="${CICD_TEST_IMAGE:-cicd-busybox:latest}"
LOG="${DOCKERD_LOG:-/tmp/cicd-dockerd.log}"

need_root() { [ "$(id -u)" = 0 ] || { echo "setup-docker: must run as root to install/start Docker" >&2; exit 1; }; }

if ! command -v dockerd >/dev/null 2>&1 || ! command -v busybox >/dev/null 2>&1; then
  need_root
  echo "setup-docker: installing docker.io and busybox-static"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io busybox-static >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  need_root
  if ! pgrep -x dockerd >/dev/null 2>&1; then
    # A pid file left by an engine that was killed blocks the next start.
    rm -f /var/run/docker.pid /run/docker.pid
    echo "setup-docker: starting dockerd (log: $LOG)"
    nohup dockerd --bridge=none --iptables=false --ip-masq=false >"$LOG" 2>&1 &
  fi
  for _ in $(seq 1 120); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { echo "setup-docker: dockerd did not come up; see $LOG" >&2; tail -20 "$LOG" >&2; exit 1; }
fi

if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "setup-docker: building $IMAGE from busybox-static"
  root=$(mktemp -d)
  mkdir -p "$root/bin" "$root/tmp" "$root/workspace" "$root/etc"
  cp "$(command -v busybox)" "$root/bin/busybox"
  chroot "$root" /bin/busybox --install -s /bin 2>/dev/null || "$root/bin/busybox" --install -s "$root/bin"
  # busybox --install -s outside a chroot writes absolute links to the host path; point them at /bin/busybox.
  for l in "$root"/bin/*; do [ -L "$l" ] && ln -sf /bin/busybox "$l"; done
  echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
  echo 'root:x:0:' >"$root/etc/group"
  chmod 1777 "$root/tmp"
  tar -C "$root" -c . | docker import -c 'CMD ["/bin/sh"]' - "$IMAGE" >/dev/null
  rm -rf "$root"
fi
echo "setup-docker: engine up, image $IMAGE ready"
