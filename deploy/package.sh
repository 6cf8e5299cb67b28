#!/usr/bin/env bash
# Builds the two Debian packages with dpkg-deb (no extra tool: the layout,
# the maintainer scripts and the conffile list are all in deploy/debian/):
#   rollgate        the CLI, its man pages, its bash/zsh/fish completions
#   rollgate-agent  the agent, its systemd unit, /etc/rollgate/agent.toml (a
#                   conffile), its state directory, the rollgate-agent man page
#
#   deploy/package.sh [--version V] [--bin-dir DIR] [--out DIR]
#                     [--compress xz|gzip|none] [--agent-config FILE]
#
# --bin-dir: take rollgate and rollgate-agent from DIR instead of building
# them (cargo build --release). --version: default, the crate's version.
# --agent-config: the example shipped as /etc/rollgate/agent.toml (default
# deploy/agent.toml). Prints the path of each package built.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
top="$(cd "$here/.." && pwd)"
version=""
bin_dir=""
out="$top/target/debian"
compress="xz"
agent_config="$here/agent.toml"
usage() { echo "usage: $0 [--version V] [--bin-dir DIR] [--out DIR] [--compress xz|gzip|none] [--agent-config FILE]" >&2; exit 64; }
while [ $# -gt 0 ]; do
  case "$1" in
    --version) version="${2:?}"; shift 2 ;;
    --bin-dir) bin_dir="${2:?}"; shift 2 ;;
    --out) out="${2:?}"; shift 2 ;;
    --compress) compress="${2:?}"; shift 2 ;;
    --agent-config) agent_config="${2:?}"; shift 2 ;;
    *) usage ;;
  esac
done
case "$compress" in xz | gzip | none) ;; *) echo "package.sh: --compress must be xz, gzip or none, not '$compress'" >&2; exit 64 ;; esac
[ -n "$version" ] || version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$top/Cargo.toml" | head -1)"
# Debian versions: digits first, then letters, digits and . + ~ (no hyphen:
# these packages are native).
if ! [[ "$version" =~ ^[0-9][A-Za-z0-9.+~]*$ ]]; then
  echo "package.sh: '$version' is not a valid version for a native Debian package" >&2
  exit 64
fi
[ -f "$agent_config" ] || { echo "package.sh: no agent config at $agent_config" >&2; exit 64; }
command -v dpkg-deb >/dev/null || { echo "package.sh: dpkg-deb is missing (apt-get install dpkg)" >&2; exit 64; }

if [ -z "$bin_dir" ]; then
  (cd "$top" && cargo build --release --locked --bin rollgate --bin rollgate-agent)
  bin_dir="$top/target/release"
fi
for b in rollgate rollgate-agent; do
  [ -x "$bin_dir/$b" ] || { echo "package.sh: no executable $bin_dir/$b" >&2; exit 64; }
done
arch="$(dpkg --print-architecture)"

# The libc6 a binary needs: its newest glibc symbol version, and 2.36 when
# it is linked with packed relocations (build.rs: the agent), which only
# that loader reads, whatever its symbols say.
libc_of() {
  local dyn syms v
  dyn="$(objdump -p "$1")" && syms="$(objdump -T "$1")" ||
    { echo "package.sh: cannot read $1 with objdump (apt-get install binutils)" >&2; exit 64; }
  v="$({ grep -o 'GLIBC_[0-9][0-9.]*' <<<"$syms" || true; } | sed 's/GLIBC_//' | sort -uV | tail -1)"
  if [[ $dyn == *GLIBC_ABI_DT_RELR* ]]; then
    v="$(printf '%s\n2.36\n' "$v" | sed '/^$/d' | sort -uV | tail -1)"
  fi
  echo "libc6${v:+ (>= $v)}"
}
depends_rollgate="$(libc_of "$bin_dir/rollgate")"
depends_agent="$(libc_of "$bin_dir/rollgate-agent")"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"

# Man pages and completions come from the CLI's own definitions.
"$bin_dir/rollgate" man --dir "$work/man" >/dev/null
gzip -9n "$work"/man/*

# build PACKAGE: finishes $work/PACKAGE into a .deb in $out.
build() {
  local pkg="$1" root="$work/$1"
  find "$root" -path "$root/DEBIAN" -prune -o -type f -print0 | xargs -0 -r md5sum |
    sed "s| $root/| |" >"$root/DEBIAN/md5sums"
  local size
  size="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
  local depends="$depends_rollgate"
  [ "$pkg" != rollgate-agent ] || depends="$depends_agent"
  sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@DEPENDS@/$depends/" -e "s/@SIZE@/$size/" \
    "$here/debian/$pkg.control" >"$root/DEBIAN/control"
  chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/md5sums"
  local deb="$out/${pkg}_${version}_${arch}.deb"
  local z=(-Zxz)
  case "$compress" in gzip) z=(-Zgzip -z1) ;; none) z=(-Znone) ;; esac
  dpkg-deb --root-owner-group "${z[@]}" --build "$root" "$deb" >/dev/null
  echo "$deb"
}

doc() { # doc PACKAGE: copyright and README
  local d="$work/$1/usr/share/doc/$1"
  install -d -m 0755 "$d"
  printf 'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: rollgate\nLicense: Apache-2.0\n\nFiles: *\nCopyright: rollgate maintainers\nLicense: Apache-2.0\n On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.\n' >"$d/copyright"
  gzip -9n -c "$top/README.md" >"$d/README.md.gz"
  find "$d" -maxdepth 1 -type f -exec chmod 0644 {} +
}

# rollgate: the CLI.
r="$work/rollgate"
install -d -m 0755 "$r/DEBIAN" "$r/usr/bin" "$r/usr/share/man/man1" \
  "$r/usr/share/bash-completion/completions" "$r/usr/share/zsh/vendor-completions" \
  "$r/usr/share/fish/vendor_completions.d"
install -m 0755 "$bin_dir/rollgate" "$r/usr/bin/rollgate"
install -m 0644 "$work"/man/rollgate*.1.gz "$r/usr/share/man/man1/"
"$bin_dir/rollgate" completions bash >"$r/usr/share/bash-completion/completions/rollgate"
"$bin_dir/rollgate" completions zsh >"$r/usr/share/zsh/vendor-completions/_rollgate"
"$bin_dir/rollgate" completions fish >"$r/usr/share/fish/vendor_completions.d/rollgate.fish"
chmod 0644 "$r"/usr/share/*/*/rollgate* "$r"/usr/share/zsh/vendor-completions/_rollgate
doc rollgate
build rollgate

# rollgate-agent: the daemon.
a="$work/rollgate-agent"
install -d -m 0755 "$a/DEBIAN" "$a/usr/bin" "$a/lib/systemd/system" "$a/usr/share/man/man8" \
  "$a/usr/share/doc/rollgate-agent/examples"
install -d -m 0750 "$a/etc/rollgate"
install -d -m 0700 "$a/var/lib/rollgate-agent"
install -m 0755 "$bin_dir/rollgate-agent" "$a/usr/bin/rollgate-agent"
install -m 0640 "$agent_config" "$a/etc/rollgate/agent.toml"
echo "/etc/rollgate/agent.toml" >"$a/DEBIAN/conffiles"
# The unit as deploy/install.sh installs it, with the packaged binary's path.
sed -e 's|/usr/local/bin/rollgate-agent|/usr/bin/rollgate-agent|' \
  -e 's|^Documentation=.*|Documentation=man:rollgate-agent(8) file:///usr/share/doc/rollgate-agent/README.Debian|' \
  -e 's|^# Install with deploy/install.sh.*|# Installed by the rollgate-agent package; enabled, started once configured.|' \
  -e '/^# \/etc\/systemd\/system\/ and run:/d' \
  "$here/rollgate-agent.service" >"$a/lib/systemd/system/rollgate-agent.service"
chmod 0644 "$a/lib/systemd/system/rollgate-agent.service"
install -m 0644 "$work/man/rollgate-agent.8.gz" "$a/usr/share/man/man8/"
install -m 0644 "$here"/agent*.toml "$here/debian/run-as-rollgate-agent.conf" "$a/usr/share/doc/rollgate-agent/examples/"
for s in postinst prerm postrm; do
  install -m 0755 "$here/debian/rollgate-agent.$s" "$a/DEBIAN/$s"
done
doc rollgate-agent
install -m 0644 "$here/debian/README.Debian" "$a/usr/share/doc/rollgate-agent/README.Debian"
build rollgate-agent
