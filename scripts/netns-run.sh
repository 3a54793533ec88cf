#!/usr/bin/env bash
# Run a command in a private network namespace whose only interface is
# loopback: WebRTC clients in the tests then cannot send to any other address.
set -euo pipefail
if [ "${SFU_IN_NETNS:-}" = 1 ]; then
  exec "$@"
fi
if [ "$(id -u)" -eq 0 ]; then
  flags=(-n)
else
  flags=(-r -n)
fi
exec unshare "${flags[@]}" env SFU_IN_NETNS=1 bash -c 'ip link set lo up && exec "$@"' bash "$@"
