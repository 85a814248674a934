"""The comparison of `bench/targets.py`: a minimal Flask bridge that does what the Flask
sign-server this platform replaces does for `POST /getCode` (docs/sign-server-compat.md).

The sign-server's own source cannot be had offline (and the published one calls Sign64.dll,
a Windows library), so the benchmark runs this equivalent, written here:
- Flask on werkzeug's threaded server (a thread per connection, HTTP/1.0: a connection per
  request), as `app.run()` starts it (without the debugger and reloader, which only slow it);
- per request: the hex body decrypted with AES-128-ECB under the folded legacy key, the JSON
  checked, one card call (`cus-sec_SpcSignDataAsPEM`) over one long-lived E-Port WebSocket
  shared under a lock (the card answers one request at a time), the `{"sign", "certNo"}`
  answer encrypted, the envelope returned as JSON; an INFO log line per step, as it logs.

Nothing else: no authentication beyond the shared key, no replay protection, no rate limit,
no audit record. Run: `python bench/signserver_bridge.py --port P --card ws://127.0.0.1:N
--key-env VAR --pin PIN` (the key from the environment variable VAR)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from flask import Flask, jsonify, request
from websockets.sync.client import connect

from core.legacy_cipher import LegacyDecryptError, legacy_data_encrypt, legacy_decrypt, legacy_key_fold
from ukey import protocol

SIGN_METHOD = "cus-sec_SpcSignDataAsPEM"
logger = logging.getLogger("signserver-bridge")


class CardLink:
    """One WebSocket to the E-Port control, one request at a time (a lock), reconnected when it fails."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.lock = threading.Lock()
        self.ws = None
        self.next_id = 0

    def sign(self, data: str, pin: str) -> tuple[str, str]:
        with self.lock:
            for attempt in (1, 2):
                try:
                    if self.ws is None:
                        self.ws = connect(self.url, max_size=64 * 1024 * 1024, compression=None, legacy=True)
                        self.ws.recv(timeout=10)  # the control's "open" handshake
                    self.next_id += 1
                    self.ws.send(protocol.build_request(SIGN_METHOD, self.next_id, {"inData": data, "passwd": pin}))
                    frame = protocol.parse_frame(self.ws.recv(timeout=30))
                    break
                except Exception:
                    self.ws = None
                    if attempt == 2:
                        raise
        result = frame.result
        if not result.ok or len(result.data) < 2:
            raise RuntimeError(f"签名失败: {result.errors}")
        return str(result.data[0]), str(result.data[1])


def bridge_app(*, key: str, card: CardLink) -> Flask:
    folded = legacy_key_fold(key)
    app = Flask(__name__)
    app.json.ensure_ascii = False

    @app.post("/getCode")
    def get_code():
        logger.info("收到 getCode 请求")
        try:
            payload = json.loads(legacy_decrypt(folded, request.get_data()))
        except (LegacyDecryptError, ValueError) as exc:
            return jsonify({"code": 400, "msg": str(exc), "data": False}), 400
        if not isinstance(payload, dict) or not isinstance(payload.get("str"), str) \
                or not isinstance(payload.get("pwdstr"), str):
            return jsonify({"code": 400, "msg": "请求体必须包含 'str' 和 'pwdstr' 字段", "data": False}), 400
        try:
            sign, cert_no = card.sign(payload["str"], payload["pwdstr"])
        except Exception as exc:
            logger.error("getCode failed: %s", exc)
            return jsonify({"code": 500, "msg": f"调用签名失败: {exc}", "data": False}), 500
        logger.info("签名成功，结果长度=%d", len(sign))
        return jsonify({"code": 200, "msg": "成功", "data": legacy_data_encrypt(folded, {"sign": sign, "certNo": cert_no})})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--card", required=True, help="the E-Port control's WebSocket URL")
    parser.add_argument("--key-env", required=True, help="environment variable holding the AES key")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access line per request
    app = bridge_app(key=os.environ[args.key_env], card=CardLink(args.card))
    app.run(host=args.host, port=args.port, threaded=True, debug=False, use_reloader=False)


if __name__ == "__main__":
    main()
