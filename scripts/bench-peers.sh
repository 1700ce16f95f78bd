#!/usr/bin/env bash
# Installs the systems `npm run bench -- --compare` measures Mainstay against, when missing:
# etcd (Debian package etcd-server, which provides `etcd`) and Redis (redis-server). Needs root
# (or sudo) and apt. The bench starts and stops its own instances on loopback, so the services
# the packages register are stopped and disabled here when systemd runs them.
set -euo pipefail

missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)

if [ ${#missing[@]} -eq 0 ]; then
  echo "etcd and redis-server are already installed:"
else
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then sudo=(sudo); fi
  echo "Installing ${missing[*]} with apt-get"
  "${sudo[@]}" apt-get update
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
  # The packages' own services would hold the default ports and use the CPU the bench measures.
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    "${sudo[@]}" systemctl disable --now etcd redis-server >/dev/null 2>&1 || true
  fi
fi
echo "  $(etcd --version 2>/dev/null | head -n 1)"
echo "  $(redis-server --version)"
