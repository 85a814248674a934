#!/usr/bin/env bash
# Installs the services the test suite runs against (Debian packages), when missing:
# redis-server, the PostgreSQL server, Chromium (and a CJK font) for the browser tests, and the tools the
# client examples are tested with (curl, openssl, a Java 17 JDK, Node.js), nginx and systemd-analyze for
# the deployment examples.
set -euo pipefail

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then need+=(postgresql); fi
command -v runuser >/dev/null 2>&1 || need+=(util-linux)
[ -x /usr/bin/chromium ] || need+=(chromium)
# A CJK font, so that the Chinese text in the admin screenshots is readable.
[ -e /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc ] || need+=(fonts-wqy-zenhei)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v javac >/dev/null 2>&1 || need+=(openjdk-17-jdk-headless)
command -v node >/dev/null 2>&1 || need+=(nodejs)
# GNU gettext: the translation check extracts the project's strings with makemessages (xgettext).
command -v xgettext >/dev/null 2>&1 || need+=(gettext)
# The deployment examples: nginx -t on the proxy configuration, systemd-analyze verify on the units.
[ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
if [ "${#need[@]}" -eq 0 ]; then
  echo "test services: redis-server, PostgreSQL, Chromium, a CJK font, curl, openssl, a JDK, Node.js, gettext, nginx and systemd-analyze already installed"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi
echo "test services: installing ${need[*]} from Debian packages"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# The packages' own init scripts would start system-wide servers; the tests start their own.
printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
$SUDO chmod +x /usr/sbin/policy-rc.d
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
$SUDO rm -f /usr/sbin/policy-rc.d
echo "test services: installed ${need[*]}"
