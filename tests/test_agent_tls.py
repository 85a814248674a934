"""The agent verifies the platform's TLS certificate, and a pinned fingerprint, before it sends
its token: a wss:// server on loopback that records every request that reaches it."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.server import serve

from signagent.agent import Agent, AgentConfig
from ukey import agentproto


def _certificate(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "platform.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "platform.pem", tmp_path / "platform.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path, hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


async def _attempt(tmp_path, cert_path, key_path, **config) -> list[dict]:
    """Run an agent against the TLS server for a moment; what reached the server."""
    seen: list[dict] = []

    async def handler(ws):
        seen.append({"authorization": ws.request.headers.get("Authorization"), "hello": await ws.recv()})
        await ws.close(agentproto.CLOSE_UNAUTHORIZED, "test over")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    async with serve(handler, "127.0.0.1", 0, ssl=context) as server:
        port = server.sockets[0].getsockname()[1]
        agent = Agent(AgentConfig(platform_url=f"wss://127.0.0.1:{port}", token="secret-agent-token",
                                  eport_url="ws://127.0.0.1:9", reconnect_min=0.2, reconnect_max=0.4, **config))
        task = asyncio.create_task(agent.run())
        await asyncio.sleep(1.5)
        agent.stop()
        await asyncio.wait_for(task, 10)
    return seen


@pytest.mark.parametrize("case", ["unknown CA", "wrong pin", "CA", "CA and pin"])
def test_the_token_goes_only_to_the_verified_and_pinned_platform(tmp_path, case, caplog):
    cert_path, key_path, fingerprint = _certificate(tmp_path)
    config = {
        "unknown CA": {},
        "wrong pin": {"ca_file": str(cert_path), "pin_sha256": ["00" * 32]},
        "CA": {"ca_file": str(cert_path)},
        "CA and pin": {"ca_file": str(cert_path), "pin_sha256": [":".join(fingerprint[i:i + 2].upper()
                                                                          for i in range(0, 64, 2))]},
    }[case]
    seen = asyncio.run(_attempt(tmp_path, cert_path, key_path, **config))
    if case in ("unknown CA", "wrong pin"):
        assert seen == []  # refused inside the TLS handshake: no request, so no token, reached it
        assert "SSLCertVerificationError" in caplog.text
        assert ("not a pinned one" in caplog.text) == (case == "wrong pin")
    else:
        assert seen and seen[0]["authorization"] == "Bearer secret-agent-token"
        assert '"hello"' in seen[0]["hello"]
    assert "secret-agent-token" not in caplog.text
