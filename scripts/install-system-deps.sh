#!/usr/bin/env bash
# Install the system programs the test-suite drives, from Debian's packages.
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v firefox-esr >/dev/null 2>&1 || need+=(firefox-esr)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v unshare >/dev/null 2>&1 && command -v setpriv >/dev/null 2>&1 || need+=(util-linux)  # setpriv: tests/test_cli.py
# Node runs the pages' scripts against a fake DOM (tests/test_static_origin.py)
command -v node >/dev/null 2>&1 || need+=(nodejs)
# Prometheus and promtool: the deploy/ config and alert rules are checked, and a real
# Prometheus scrapes the SFU, in tests/test_deploy.py and tests/e2e/test_metrics_e2e.py
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
# PostgreSQL server binaries (initdb, pg_ctl in /usr/lib/postgresql/*/bin) for the
# history store's PostgreSQL backend tests (tests/pgserver.py); runuser runs them as postgres
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
# GStreamer webrtcbin as a WHIP publisher (tests/e2e/gst_whip_publisher.py, system python3)
for pkg in python3-gi gir1.2-gst-plugins-base-1.0 gir1.2-gst-plugins-bad-1.0 \
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
  gstreamer1.0-nice gstreamer1.0-tools; do
  [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" = "install ok installed" ] || need+=("$pkg")
done
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing system packages: ${need[*]} (install them with apt-get as root)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
