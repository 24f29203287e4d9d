#!/usr/bin/env bash
# The browser tests' system packages: Debian's chromium and chromium-driver, with fonts-noto-cjk
# for Chinese. Installed with apt-get when missing and we may (root, or sudo without a password);
# otherwise the browser tests skip and say why.
set -uo pipefail
# (fc-list's output is captured first: with pipefail, `fc-list | grep -q` fails when grep exits early)
have() { command -v chromium >/dev/null && command -v chromedriver >/dev/null && [[ "$(fc-list 2>/dev/null)" == *[Nn]oto*CJK* ]]; }
have && exit 0
command -v apt-get >/dev/null || { echo "install_browser: no apt-get here; the browser tests will skip" >&2; exit 0; }
if [ "$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
  echo "install_browser: not root and no passwordless sudo; the browser tests will skip" >&2; exit 0; fi
echo "install_browser: installing chromium, chromium-driver, fonts-noto-cjk (apt-get) ..." >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null 2>&1 && $SUDO apt-get install -y -qq chromium chromium-driver fonts-noto-cjk >/dev/null 2>&1
have && echo "install_browser: ready" >&2 || echo "install_browser: the install failed; the browser tests will skip" >&2
exit 0
