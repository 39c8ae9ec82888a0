#!/usr/bin/env bash
# Smoke test of a deployed (or local) MetaHub front. Run it after every deploy.
#
#   METAHUB_SMOKE_LOGIN=fleet-skylake METAHUB_SMOKE_PASSWORD=... \
#     infra/smoke.sh URL [--function-url URL] [--image REPO:TAG] [--insecure]
#
#   URL              what clients use, e.g. https://d111.cloudfront.net (stack output PublicUrl)
#   --function-url   the registry Function URL (stack output RegistryFunctionUrl): must refuse direct calls
#   --image          a small public image on the upstream (default library/busybox:latest)
#
# Checks: /v2/ answers 401 with realm URL/token; a login with the account works; the image's
# index pulls (body digest = Docker-Content-Digest, a child manifest by digest, its config blob
# through the redirect); a HEAD carries Content-Length and Docker-Content-Digest; answers say
# Cache-Control no-store; a direct call to the Function URL gets 403. Needs curl and python3.
set -uo pipefail

url=""
function_url=""
image="${METAHUB_SMOKE_IMAGE:-library/busybox:latest}"
curl_opts=(--silent --show-error --max-time 30)
login="${METAHUB_SMOKE_LOGIN:-}"
password="${METAHUB_SMOKE_PASSWORD:-}"

die() { echo "smoke.sh: $*" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --function-url) function_url="$2"; shift 2 ;;
    --image) image="$2"; shift 2 ;;
    --insecure) curl_opts+=(--insecure); shift ;;
    -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [[ -z "$url" ]] || die "one URL only"; url="${1%/}"; shift ;;
  esac
done
[[ -n "$url" ]] || die "usage: smoke.sh URL [--function-url URL] [--image REPO:TAG]"
[[ -n "$login" && -n "$password" ]] || die "set METAHUB_SMOKE_LOGIN and METAHUB_SMOKE_PASSWORD (an account of a machine type)"
[[ "$image" == *:* ]] || die "--image must be REPO:TAG"
repo="${image%:*}"
tag="${image##*:}"
command -v curl >/dev/null || die "curl not found"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0
ok() { echo "ok    $*"; }
fail() { echo "FAIL  $*"; failed=$((failed + 1)); }

ACCEPT="application/vnd.oci.image.index.v1+json,application/vnd.docker.distribution.manifest.list.v2+json,\
application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json"

# request NAME METHOD URL [curl args...]: body in $work/NAME.body, headers in $work/NAME.headers, status echoed
request() {
  local name="$1" method="$2" target="$3"; shift 3
  local head=(--silent)  # never empty: bash 3.2 (macOS) calls "${empty[@]}" unbound under set -u
  [[ "$method" == HEAD ]] && head=(--head)
  curl "${curl_opts[@]}" "${head[@]}" -X "$method" -o "$work/$name.body" -D "$work/$name.headers" \
    -w '%{http_code}' "$@" "$target" 2>"$work/$name.err" || echo "000"
}
header() { # NAME HEADER -> value of the last such header (case-insensitive)
  python3 - "$work/$1.headers" "$2" <<'PY'
import sys
value = ""
for line in open(sys.argv[1], encoding="latin-1"):
    if ":" in line and line.split(":", 1)[0].strip().lower() == sys.argv[2].lower():
        value = line.split(":", 1)[1].strip()
print(value)
PY
}
sha256_of() { python3 -c 'import hashlib,sys; print("sha256:" + hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1"; }
json_get() { # FILE PYTHON-EXPR over `d` -> value
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2" 2>/dev/null
}

# 1. the challenge
status=$(request ping GET "$url/v2/")
challenge=$(header ping WWW-Authenticate)
realm=$(sed -n 's/.*realm="\([^"]*\)".*/\1/p' <<<"$challenge")
service=$(sed -n 's/.*service="\([^"]*\)".*/\1/p' <<<"$challenge")
if [[ "$status" == 401 && "$realm" == "$url/token" ]]; then ok "GET /v2/ -> 401, realm $realm"
else fail "GET /v2/ -> $status, realm '${realm}' (want 401 and $url/token) $(cat "$work/ping.err")"; fi
if [[ "$(header ping Cache-Control)" == *no-store* ]]; then ok "401 says Cache-Control: $(header ping Cache-Control)"
else fail "401 without Cache-Control no-store"; fi

# 2. a login
# The credentials go to curl in a config file (mode 600), never on its command line, where ps would show them.
curl_quote() { local v="${1//\\/\\\\}"; printf '"%s"' "${v//\"/\\\"}"; }
(umask 077; printf 'user = %s\n' "$(curl_quote "$login:$password")" > "$work/credentials.curl")
status=$(request token GET "${realm:-$url/token}?service=${service:-metahub}&scope=repository:$repo:pull" --config "$work/credentials.curl")
token=$(json_get "$work/token.body" 'd.get("token") or d.get("access_token") or ""')
if [[ "$status" == 200 && -n "$token" ]]; then ok "login as $login -> token"
else fail "login as $login -> $status $(head -c 300 "$work/token.body")"; fi
auth=(-H "Authorization: Bearer $token")
printf '%s' "$token" >/dev/null

# 3. the pull
status=$(request manifest GET "$url/v2/$repo/manifests/$tag" "${auth[@]}" -H "Accept: $ACCEPT")
digest=$(header manifest Docker-Content-Digest)
if [[ "$status" == 200 && -n "$digest" && "$(sha256_of "$work/manifest.body")" == "$digest" ]]; then
  ok "GET $repo:$tag -> $digest ($(header manifest Content-Type))"
else
  fail "GET $repo:$tag -> $status, digest '$digest' $(head -c 300 "$work/manifest.body")"
fi
child=$(json_get "$work/manifest.body" '(d.get("manifests") or [{}])[0].get("digest", "")')
manifest_name=manifest
if [[ -n "$child" ]]; then
  status=$(request child GET "$url/v2/$repo/manifests/$child" "${auth[@]}" -H "Accept: $ACCEPT")
  if [[ "$status" == 200 && "$(sha256_of "$work/child.body")" == "$child" ]]; then ok "GET child manifest $child"
  else fail "GET child manifest $child -> $status"; fi
  manifest_name=child
fi
config=$(json_get "$work/$manifest_name.body" 'd.get("config", {}).get("digest", "")')
if [[ -n "$config" ]]; then
  status=$(request blob GET "$url/v2/$repo/blobs/$config" "${auth[@]}" --location)
  if [[ "$status" == 200 && "$(sha256_of "$work/blob.body")" == "$config" ]]; then ok "GET config blob $config (through the redirect)"
  else fail "GET config blob $config -> $status"; fi
else
  fail "no config blob in the manifest of $repo:$tag"
fi

# 4. HEAD
status=$(request head HEAD "$url/v2/$repo/manifests/$tag" "${auth[@]}" -H "Accept: $ACCEPT")
length=$(header head Content-Length)
head_digest=$(header head Docker-Content-Digest)
if [[ "$status" == 200 && -n "$length" && "$head_digest" == "$digest" && "$length" == "$(wc -c <"$work/manifest.body" | tr -d ' ')" ]]; then
  ok "HEAD $repo:$tag -> Content-Length $length, Docker-Content-Digest $head_digest"
else
  fail "HEAD $repo:$tag -> $status, Content-Length '$length', Docker-Content-Digest '$head_digest' (GET said $digest)"
fi
if [[ "$(header manifest Cache-Control)" == *no-store* ]]; then ok "manifest says Cache-Control: $(header manifest Cache-Control)"
else fail "manifest without Cache-Control no-store"; fi

# 5. around CloudFront
if [[ -n "$function_url" ]]; then
  status=$(request direct GET "${function_url%/}/v2/")
  if [[ "$status" == 403 ]]; then ok "direct call to the Function URL -> 403"
  else fail "direct call to the Function URL -> $status (want 403: only CloudFront may call it)"; fi
else
  echo "skip  direct call to the Function URL (no --function-url)"
fi

echo
if ((failed)); then echo "smoke: $failed check(s) failed against $url"; exit 1; fi
echo "smoke: all checks passed against $url"
