#!/usr/bin/env bash
# Sign and send one request to the signing platform with nothing but bash, curl and openssl
# (request signing: docs/signing-api.md §1).
#
#   examples/sign.sh '{"data": "hello"}'                      POST /api/v1/sign with this JSON body
#   examples/sign.sh METHOD PATH[?QUERY] [JSON_BODY]           any endpoint, for example
#   examples/sign.sh GET '/api/v1/certificate?device=default'
#
# Environment: SIGNPLATFORM_URL (default http://127.0.0.1:8000), SIGNPLATFORM_ACCESS_ID,
# SIGNPLATFORM_SECRET. DEBUG=1 also prints the string to sign and the response headers on stderr.
# The JSON answer goes to stdout; the exit status is 1 when the platform answered an error.
#
# PATH is used as given: pass it unencoded (the API's paths are plain ASCII). QUERY is passed
# percent-encoded, as it appears in the URL; it is sent as is and signed in its canonical form.
# Note: openssl receives the secret as a command-line argument (visible in `ps` for a moment);
# on a shared machine prefer the Python or Java client.
set -euo pipefail
export LC_ALL=C # byte semantics for the encoding loop and for sort

die() { echo "sign.sh: $*" >&2; exit 2; }

base_url=${SIGNPLATFORM_URL:-http://127.0.0.1:8000}
access_id=${SIGNPLATFORM_ACCESS_ID:-}
secret=${SIGNPLATFORM_SECRET:-}
[[ -n $access_id && -n $secret ]] || die "set SIGNPLATFORM_ACCESS_ID and SIGNPLATFORM_SECRET"

case $# in
  1) method=POST; target=/api/v1/sign; body=$1; has_body=1 ;;
  2) method=$1; target=$2; body=; has_body=0 ;;
  3) method=$1; target=$2; body=$3; has_body=1 ;;
  *) die "usage: sign.sh JSON_BODY | sign.sh METHOD PATH[?QUERY] [JSON_BODY]" ;;
esac
method=$(printf '%s' "$method" | tr '[:lower:]' '[:upper:]')
path=${target%%\?*}
query=
[[ $target == *\?* ]] && query=${target#*\?}

# One name or value of the query: percent-decode it ('+' read as a space, as the server reads
# queries) and encode it again per RFC 3986: only A-Z a-z 0-9 - _ . ~ stay, every other byte
# becomes %XX (upper-case hex). The result is left in $REPLY.
rfc3986() {
  local s=$1 out='' c hex i
  for ((i = 0; i < ${#s}; i++)); do
    c=${s:i:1}
    hex=${s:i+1:2}
    if [[ $c == % && $hex == [0-9A-Fa-f][0-9A-Fa-f] ]]; then
      printf -v c '%b' "\\x$hex"
      i=$((i + 2))
    elif [[ $c == + ]]; then
      c=' '
    fi
    case $c in
      [A-Za-z0-9._~-]) out+=$c ;;
      *) printf -v hex '%%%02X' "'$c"; out+=$hex ;;
    esac
  done
  REPLY=$out
}

# Canonical query: every name=value pair (a pair without '=' has a blank value), each part
# encoded as above, sorted by name then value (byte order), joined with '&'.
canonical_query() {
  local pair name value
  local -a raw=() pairs=()
  IFS='&' read -r -a raw <<<"$1"
  for pair in ${raw[@]+"${raw[@]}"}; do
    [[ -n $pair ]] || continue
    name=${pair%%=*}
    value=
    [[ $pair == *=* ]] && value=${pair#*=}
    rfc3986 "$name"; name=$REPLY
    rfc3986 "$value"; value=$REPLY
    pairs+=("$name=$value")
  done
  ((${#pairs[@]})) || return 0
  # Encoded names and values contain no '=', so field 1 is the name and field 2 the value.
  printf '%s\n' "${pairs[@]}" | sort -t '=' -k1,1 -k2,2 | paste -sd '&' -
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The body is hashed and sent from the same file, so the signed bytes are the sent bytes.
printf '%s' "$body" >"$work/body"

timestamp=$(date +%s%3N)                              # milliseconds (GNU date)
[[ $timestamp =~ ^[0-9]+$ ]] || timestamp="$(date +%s)000" # date without %N (BSD/macOS)
nonce=$(openssl rand -hex 16)
body_sha256=$(openssl dgst -sha256 -r <"$work/body" | cut -d' ' -f1)

string_to_sign="HMAC-SHA256
$method
$path
$(canonical_query "$query")
$access_id
$timestamp
$nonce
$body_sha256"
signature=$(printf '%s' "$string_to_sign" | openssl dgst -sha256 -hmac "$secret" -r | cut -d' ' -f1)

if [[ ${DEBUG:-} == 1 ]]; then
  printf -- '--- string to sign ---\n%s\n--- end of string to sign ---\n' "$string_to_sign" >&2
fi

args=(--silent --show-error --globoff -X "$method" -o "$work/answer" -D "$work/headers" -w '%{http_code}'
      -H "X-Access-Id: $access_id" -H "X-Timestamp: $timestamp" -H "X-Nonce: $nonce" -H "X-Signature: $signature")
if ((has_body)); then
  args+=(-H 'Content-Type: application/json' --data-binary "@$work/body")
fi
status=$(curl "${args[@]}" "${base_url%/}$target")

[[ ${DEBUG:-} == 1 ]] && cat "$work/headers" >&2
cat "$work/answer"
[[ -s $work/answer && $(tail -c 1 "$work/answer") != '' ]] && echo
if ((status >= 400)); then
  echo "sign.sh: HTTP $status" >&2
  exit 1
fi
