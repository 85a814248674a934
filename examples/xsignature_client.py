#!/usr/bin/env python3
"""The `x-signature` client profile (docs/client-profiles.md): stands for the clients of the old
FastAPI internal signing API (headers X-Timestamp, X-Nonce, X-Signature, optional X-Access-Id).
A minimal example, Python 3.8+, standard library only.

    python3 examples/xsignature_client.py "text to sign"

Environment: SIGNPLATFORM_URL (default http://127.0.0.1:8000), SIGNPLATFORM_SECRET (the App
Secret of the access ID with the x-signature profile) and, optionally, SIGNPLATFORM_ACCESS_ID
(sent as X-Access-Id; without it the platform uses the profile's default access ID).
Prints the platform's JSON answer; on an error answer it prints it on stderr with the HTTP
status and exits with status 1.

Note: this scheme signs only the nonce and the timestamp, not the body (the platform marks the
profile as weak); new clients should use the native request signing (docs/signing-api.md).
"""

import base64
import hashlib
import hmac
import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.request


def main(argv):
    if len(argv) != 1:
        print('usage: python3 xsignature_client.py "text to sign"', file=sys.stderr)
        return 2
    base_url = (os.environ.get("SIGNPLATFORM_URL") or "http://127.0.0.1:8000").rstrip("/")
    access_id = os.environ.get("SIGNPLATFORM_ACCESS_ID", "")
    secret = os.environ.get("SIGNPLATFORM_SECRET", "")
    if not secret:
        print("set SIGNPLATFORM_SECRET", file=sys.stderr)
        return 2

    timestamp = str(int(time.time()))  # Unix seconds
    nonce = secrets.token_hex(16)  # 1-128 characters, used once
    string_to_sign = "nonce={}&timestamp={}".format(nonce, timestamp)
    digest = hmac.new(secret.encode("utf-8"), string_to_sign.encode("utf-8"), hashlib.sha256).digest()
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "X-Timestamp": timestamp,
        "X-Nonce": nonce,
        "X-Signature": base64.b64encode(digest).decode("ascii"),
    }
    if access_id:
        headers["X-Access-Id"] = access_id

    body = json.dumps({"data": argv[0]}, ensure_ascii=False).encode("utf-8")
    request = urllib.request.Request(base_url + "/api/v1/sign", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = response.read().decode("utf-8")
    except urllib.error.HTTPError as error:
        # {"code": 401, "msg": "signature_auth failed"}
        print("HTTP {}: {}".format(error.code, error.read().decode("utf-8", "replace")), file=sys.stderr)
        return 1
    except urllib.error.URLError as error:
        print("cannot reach {}: {}".format(base_url, error.reason), file=sys.stderr)
        return 1
    # {"signature": "<base64>", "cert_no": "...", "algorithm": "...", "device": "...", "request_id": "..."}
    print(answer)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
