"""`python -m signclient sign "text"` and friends; credentials from the environment:
SIGNPLATFORM_URL (default http://127.0.0.1:8000), SIGNPLATFORM_ACCESS_ID, SIGNPLATFORM_SECRET."""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import ApiError, SignClient


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    with open(path, encoding="utf-8", newline="") as fh:
        return fh.read()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m signclient", description="Call the signing platform's API.")
    parser.add_argument("--url", default=os.environ.get("SIGNPLATFORM_URL", "http://127.0.0.1:8000"))
    sub = parser.add_subparsers(dest="command", required=True)
    sign = sub.add_parser("sign", help="sign a text (use - to read it from standard input)")
    sign.add_argument("data")
    sign.add_argument("--no-hash", action="store_true", help="send the SHA-1 digest to SpcSignDataNoHashAsPEM")
    sign.add_argument("--device")
    cert = sub.add_parser("certificate", help="the card's certificate")
    cert.add_argument("--device")
    rpc = sub.add_parser("rpc", help="call an allowed card method")
    rpc.add_argument("method")
    rpc.add_argument("--args", default="{}", help="JSON object of the method's args")
    sign_xml = sub.add_parser("sign-xml", help="sign a CEB XML message file (- for standard input)")
    sign_xml.add_argument("file")
    sign_xml.add_argument("--filename", help="store it under this name (default: generated)")
    sign_xml.add_argument("--directory")
    sign_xml.add_argument("--device")
    sign_xml.add_argument("--out", help="write the signed XML to this file instead of printing the JSON answer")
    verify_xml = sub.add_parser("verify-xml", help="check a signed CEB XML message file")
    verify_xml.add_argument("file")
    sign_179 = sub.add_parser("sign-179", help="sign 179 payment data from a JSON file")
    sign_179.add_argument("file")
    sign_179.add_argument("--upload", action="store_true", help="also post it to customs")
    rotate = sub.add_parser("rotate", help="rotate this access ID's own secret (prints the new one once)")
    rotate.add_argument("--grace-seconds", type=int, default=86400)
    sub.add_parser("health", help="the platform's health (no credentials needed)")
    options = parser.parse_args(argv)

    access_id = os.environ.get("SIGNPLATFORM_ACCESS_ID", "")
    secret = os.environ.get("SIGNPLATFORM_SECRET", "")
    if options.command != "health" and not (access_id and secret):
        parser.error("set SIGNPLATFORM_ACCESS_ID and SIGNPLATFORM_SECRET")
    client = SignClient(options.url, access_id, secret)
    try:
        if options.command == "sign":
            data = sys.stdin.read() if options.data == "-" else options.data
            result = client.sign(data, no_hash=options.no_hash, device=options.device)
        elif options.command == "certificate":
            result = client.certificate(options.device)
        elif options.command == "rpc":
            result = client.rpc(options.method, json.loads(options.args))
        elif options.command == "sign-xml":
            result = client.sign_xml(_read(options.file), filename=options.filename, directory=options.directory,
                                     device=options.device)
            if options.out:
                with open(options.out, "w", encoding="utf-8", newline="") as fh:
                    fh.write(result["signed_xml"])
                result = {k: v for k, v in result.items() if k != "signed_xml"}
        elif options.command == "verify-xml":
            result = client.verify_xml(_read(options.file))
        elif options.command == "sign-179":
            result = client.sign_179(_read(options.file), upload=options.upload)
        elif options.command == "rotate":
            result = client.rotate_self(options.grace_seconds)
        else:
            result = client.health()
    except ApiError as exc:
        print(json.dumps({"status": exc.status, "code": exc.code, "message": exc.message,
                          "request_id": exc.request_id, "details": exc.details}, ensure_ascii=False), file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot reach {options.url}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, ensure_ascii=False, indent=2))
    if options.command == "verify-xml" and not result.get("valid"):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
