# Sourced by the scripts that install a Debian package a test tier needs (browser.sh,
# faketime.sh). apt_install PKG...: install with apt-get as root (or with sudo -n), trying an
# `apt-get update` first only when the install fails; returns 1, saying why on stderr, when
# this user cannot install packages or there is no apt-get.
apt_install() {
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
      sudo=(sudo -n)
    else
      echo "$* is not installed and this user cannot apt-get install it" >&2
      return 1
    fi
  fi
  if ! command -v apt-get >/dev/null; then
    echo "$* is not installed and there is no apt-get to install it" >&2
    return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get install -y -q "$@" >&2 || {
    "${sudo[@]}" apt-get update -q >&2
    "${sudo[@]}" apt-get install -y -q "$@" >&2
  }
}
