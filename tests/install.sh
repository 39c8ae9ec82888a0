#!/usr/bin/env bash
# The one list of what MetaHub's tests, deploy checks, benchmarks and fuzzing install, and the installer.
#
#   bash tests/install.sh [GROUP...]     groups: test deploy sam-build bench fuzz (default: test); all = every group
#
# On every run, even when everything is present, each Debian, PyPI and crates.io name below is looked up in its
# registry (apt-cache policy, pip install --dry-run, cargo info): a misspelt or vanished name fails here, naming
# it, on any machine, instead of only on the next fresh one. Then only what the GROUPs need and is missing is
# installed (apt-get update at most once, and only when a lookup fails, the lists are missing or a day old).
# Debian bookworm, as root for apt. PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

# group   kind   name                               present when (all hold: cmd:BIN, py:MODULE, file:PATH)
PACKAGES='
test      apt    docker-registry                    cmd:docker-registry
test      apt    skopeo                             cmd:skopeo
test      apt    podman                             cmd:podman
test      apt    containerd                         cmd:containerd cmd:ctr
test      apt    docker.io                          cmd:dockerd cmd:docker
test      apt    golang-github-containers-common    file:/etc/containers/policy.json
test      apt    python3                            cmd:python3
test      apt    python3-pip                        py:pip
test      pip    pytest                             py:pytest
test      pip    requests                           py:requests
test      pip    moto[server]                       py:moto py:flask py:flask_cors cmd:moto_server
test      pip    boto3                              py:boto3
test      pip    argon2-cffi                        py:argon2
test      pip    cryptography                       py:cryptography
test      pip    pynacl                             py:nacl
test      apt    chromium                           cmd:chromium
test      apt    chromium-driver                    cmd:chromedriver
test      pip    selenium                           py:selenium
test      apt    apache2-utils                      cmd:htpasswd
test      apt    bash                               cmd:bash
test      apt    mount                              cmd:umount
test      apt    nodejs                             cmd:node
test      pip    grpcio                             py:grpc
test      pip    grpcio-tools                       py:grpc_tools
test      pip    pyyaml                             py:yaml
test      apt    g++                                cmd:c++
deploy    apt    python3                            cmd:python3
deploy    apt    python3-pip                        py:pip
deploy    pip    pytest                             py:pytest
deploy    pip    cfn-lint                           py:cfnlint cmd:cfn-lint
deploy    pip    aws-sam-cli                        py:samcli cmd:sam
sam-build pip    cargo-lambda                       cmd:cargo-lambda
sam-build pip    ziglang                            py:ziglang
bench     apt    wrk                                cmd:wrk
bench     apt    apache2-utils                      cmd:ab
bench     apt    zip                                cmd:zip
bench     apt    docker-registry                    cmd:docker-registry
bench     apt    skopeo                             cmd:skopeo
bench     apt    python3-pip                        py:pip
bench     pip    requests                           py:requests
bench     pip    moto[server]                       py:moto py:flask py:flask_cors cmd:moto_server
bench     pip    boto3                              py:boto3
fuzz      apt    g++                                cmd:c++
fuzz      cargo  cargo-fuzz                         cmd:cargo-fuzz
'

PY=${PYTHON:-python3}
export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
log() { printf '== install: %s\n' "$*"; }
die() { printf 'install: %s\n' "$*" >&2; exit 1; }

groups=("$@")
[ "${#groups[@]}" -gt 0 ] || groups=(test)
[ "${groups[*]}" != all ] || groups=(test deploy sam-build bench fuzz)
known=$(awk 'NF { print $1 }' <<<"$PACKAGES" | sort -u)
for g in "${groups[@]}"; do
  grep -qx -- "$g" <<<"$known" || die "unknown group '$g' (groups: $(echo $known))"
done

names_of() { # KIND -> every name of that kind, all groups, once each
  awk -v k="$1" 'NF && $2 == k { print $3 }' <<<"$PACKAGES" | sort -u
}

# ------------------------------------------------------------------------------------------- validation: apt
# A name exists when some configured archive offers it: `apt-cache policy` lists an archive source for it (an
# installed package alone only shows /var/lib/dpkg/status, which would hide a name the archive has dropped).
APT_UPDATED=0
apt_update() {
  [ "$APT_UPDATED" = 0 ] || return 0
  log "apt-get update"
  timeout 600 apt-get update -q || die "apt-get update failed"
  APT_UPDATED=1
}
apt_unknown() { # NAME... -> those no archive offers
  apt-cache policy "$@" 2>/dev/null | awk '
    /^[^ ]/ { sub(/:$/, ""); pkg = $0; next }
    / [a-z+]+:\/\/| file:\/| cdrom:/ { found[pkg] = 1 }
    END { for (p in found) print p }' | sort -u | comm -23 <(printf '%s\n' "$@" | sort -u) -
}
lists_are_old() { # no package lists, or none refreshed within a day
  [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 -print -quit 2>/dev/null)" ]
}
mapfile -t apt_names < <(names_of apt)
command -v apt-cache >/dev/null || die "apt-cache not found: this script needs Debian (bookworm) to check and install ${apt_names[*]}"
mapfile -t unknown < <(apt_unknown "${apt_names[@]}")
if [ "${#unknown[@]}" -gt 0 ]; then
  apt_update # the lists may be missing (a fresh image) or stale
  mapfile -t unknown < <(apt_unknown "${apt_names[@]}")
  [ "${#unknown[@]}" -eq 0 ] || die "no Debian package named: ${unknown[*]} (apt-cache policy finds it in no configured archive; fix PACKAGES in tests/install.sh)"
fi

# ------------------------------------------------------------------------------------------- validation: PyPI
# One resolver run for every name, without installing: pip fetches each name's metadata from the index.
# --report keeps pip from refusing a Debian "externally managed" python before it even resolves.
pip_ok=1
if ! "$PY" -m pip --version >/dev/null 2>&1; then
  pip_ok=0 # installed below (python3-pip) and then validated
fi
validate_pip() {
  local out bad
  mapfile -t pip_names < <(names_of pip)
  if ! out=$(timeout 600 "$PY" -m pip install --dry-run --no-deps --ignore-installed --quiet --report /dev/null "${pip_names[@]}" 2>&1); then
    bad=$(grep -oE 'No matching distribution found for [^ ]+' <<<"$out" | awk '{ print $NF }' | sort -u | xargs || true)
    [ -z "$bad" ] || die "no PyPI package named: $bad (fix PACKAGES in tests/install.sh)"
    die "could not check the PyPI names ${pip_names[*]} (is PyPI reachable?):
$out"
  fi
}

# ------------------------------------------------------------------------------------------- validation: crates.io
validate_cargo() {
  local name out
  command -v cargo >/dev/null || return 0 # no Rust toolchain: nothing here builds anyway (the build step says so)
  for name in $(names_of cargo); do
    # `cargo info` reads the index (works through registry mirrors, unlike `cargo search`)
    if ! out=$(cd /tmp && timeout 120 cargo info --quiet "$name" 2>&1); then
      grep -q "could not find" <<<"$out" && die "no crates.io crate named: $name (fix PACKAGES in tests/install.sh)"
      die "could not look up crate $name (is crates.io reachable?): $out"
    fi
  done
}
# the three registries answer side by side (each lookup mostly waits on the network)
jobs_=()
if [ "$pip_ok" = 1 ]; then validate_pip & jobs_+=($!); fi
validate_cargo & jobs_+=($!)
for j in "${jobs_[@]}"; do wait "$j" || exit 1; done

# ------------------------------------------------------------------------------------------- what is missing
# The selected groups' rows, each name once: "kind name probes..."
selected=$(awk -v gs=" ${groups[*]} " 'NF && index(gs, " " $1 " ") { $1 = ""; print }' <<<"$PACKAGES" | sort -u -k2,2)

MISSING_MODULES=" "
find_missing_modules() { # every py: probe of the selected rows, checked in one interpreter (found, not imported)
  local mods
  # `|| true`: a group without Python modules (fuzz) has nothing to grep, which must not end the script
  mods=$({ grep -oE 'py:[^ ]+' <<<"$selected" || true; } | cut -d: -f2 | sort -u | xargs)
  MISSING_MODULES=" $("$PY" - $mods <<'EOF' 2>/dev/null || echo "$mods"
import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
EOF
) "
}
present() { # probes... -> 0 when all hold
  local p
  for p in "$@"; do
    case "$p" in
      cmd:*) command -v "${p#cmd:}" >/dev/null 2>&1 || return 1 ;;
      file:*) [ -e "${p#file:}" ] || return 1 ;;
      py:*) [[ "$MISSING_MODULES" != *" ${p#py:} "* ]] || return 1 ;;
      *) die "bad probe '$p' in tests/install.sh" ;;
    esac
  done
}
missing_of() { # KIND -> the selected names of that kind that are not present
  local kind name probes
  while read -r kind name probes; do
    [ "$kind" = "$1" ] || continue
    # shellcheck disable=SC2086 # probes are words
    present $probes || echo "$name"
  done <<<"$selected"
}

# ------------------------------------------------------------------------------------------- install
installed=()
find_missing_modules
mapfile -t want < <(missing_of apt)
if [ "${#want[@]}" -gt 0 ]; then
  if lists_are_old; then apt_update; fi
  log "apt-get install ${want[*]}"
  installed+=("${want[@]}")
  timeout 1200 apt-get install -y -q "${want[@]}" || {
    apt_update # a stale list can name a .deb the mirror no longer has
    timeout 1200 apt-get install -y -q "${want[@]}"
  } || die "apt-get install ${want[*]} failed"
  hash -r
fi
[ "$pip_ok" = 1 ] || validate_pip
find_missing_modules
mapfile -t want < <(missing_of pip)
if [ "${#want[@]}" -gt 0 ]; then
  log "pip install ${want[*]}"
  installed+=("${want[@]}")
  # Debian's own python3 is "externally managed" (PEP 668); a pyenv/venv python is not
  timeout 1200 "$PY" -m pip install -q "${want[@]}" \
    || timeout 1200 "$PY" -m pip install -q --break-system-packages "${want[@]}" \
    || die "pip install ${want[*]} failed"
  hash -r
fi

mapfile -t want < <(missing_of cargo)
if [ "${#want[@]}" -gt 0 ]; then
  log "cargo install ${want[*]}"
  installed+=("${want[@]}")
  timeout 1800 cargo install --locked "${want[@]}" || die "cargo install ${want[*]} failed"
fi

# An extra that the package does not (or no longer) provide is silently ignored by pip: check it.
"$PY" - $(names_of pip | grep -F '[') <<'EOF' || exit 1
import importlib.metadata as md, re, sys
bad = []
for req in sys.argv[1:]:
    dist, extras = re.fullmatch(r"([^\[]+)\[([^\]]+)\]", req).groups()
    try:
        offered = {e.lower() for e in (md.metadata(dist).get_all("Provides-Extra") or [])}
    except md.PackageNotFoundError:
        continue  # not installed here (another group's): pip's lookup above checked the name
    bad += [f"{dist}[{e}]" for e in extras.split(",") if e.strip().lower() not in offered]
if bad:
    sys.exit(f"install: no such extra: {' '.join(bad)} (fix PACKAGES in tests/install.sh)")
EOF

# what is still missing after installing is a broken package or probe: say which
find_missing_modules
still=$( { missing_of apt; missing_of pip; missing_of cargo; } | xargs)
[ -z "$still" ] || die "installed but still not usable: $still (see the probes in tests/install.sh)"
log "ok: ${groups[*]}: looked up $(names_of apt | wc -l) Debian, $(names_of pip | wc -l) PyPI and $(names_of cargo | wc -l) crates.io names; installed: ${installed[*]:-nothing, all present}"
