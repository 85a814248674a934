"""Defects an independent attack found, each shown fixed against a running platform: no
signature handed to the wrong caller, no request without its audit event, no cheap way to
stall the server, no input that gets a 500 or is silently coerced."""

from __future__ import annotations

import threading
import time

import pytest

from accessids.services import access_id_create
from audit.models import AuditEvent
from core.certs import certificate_load, signature_verify
from tests.conftest import SimulatorProcess, test_database_url
from tests.live import CardPlatforms, Platform, services_env
from tests.test_api import call, certificate

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def hardening_platforms(django_db_setup, django_db_blocker, tmp_path_factory):
    """Platforms with their own simulator: "swap" answers one signing request in ten with the
    previous request's signature (a control or relay that mixes answers up)."""

    def start(kind: str):
        tmp = tmp_path_factory.mktemp(f"hardening-{kind}")
        extra = ["--fault", "swap", "--fault-rate", "0.1"] if kind == "swap" else []
        sim = SimulatorProcess(algorithm="rsa", key_dir=str(tmp / "keys"), extra=extra).start()
        with django_db_blocker.unblock():
            env = services_env(test_database_url(), tmp / "var", UKEY_URL=sim.url, UKEY_PIN=sim.pin,
                               UKEY_DEFAULT_DEVICE=f"hardening-{kind}", UKEY_RECONNECT_MAX="0.5")
            return sim, Platform(env, tmp).start()

    platforms = CardPlatforms(start)
    yield platforms
    platforms.stop()


def test_a_control_that_mixes_answers_up_never_hands_a_signature_to_the_wrong_caller(hardening_platforms):
    sim, platform = hardening_platforms("swap")
    access, secret = access_id_create(name="ERP, 200 orders")
    info = certificate_load(certificate(platform, access, secret)["certificate_pem"])
    outcomes: dict[str, tuple[int, dict]] = {}

    def client(worker: int):
        for n in range(25):
            text = f"CEB311 order {worker}-{n} ¥{worker * 1000 + n}.00"
            for _attempt in range(20):  # the connection is reset after a mix-up: wait for it
                status, _, body = call(platform, "POST", "/api/v1/sign", {"data": text}, access=access,
                                       secret=secret)
                if status != 503:
                    break
                time.sleep(0.2)
            outcomes[text] = (status, body)

    threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(outcomes) == 200
    signed = {text: body for text, (status, body) in outcomes.items() if status == 200}
    refused = {text: body for text, (status, body) in outcomes.items() if status != 200}
    wrong = [text for text, body in signed.items() if not signature_verify(info, text.encode(), body["signature"])]
    assert wrong == []  # zero signatures over somebody else's data handed out
    assert signed and refused, (len(signed), len(refused))
    assert {(outcomes[t][0], b["code"]) for t, b in refused.items()} == {(502, "UKEY_ERROR")}
    assert all("was not handed out" in body["message"] for body in refused.values())
    mixups = AuditEvent.objects.filter(event_type=AuditEvent.CARD_ERROR, outcome="ANSWER_MISMATCH",
                                       device="hardening-swap")
    assert mixups.count() >= len(refused) and "connection reset" in mixups.first().message
    # Each refused request still has its own audit event, with the outcome the caller saw.
    request_ids = [body["request_id"] for body in refused.values()]
    assert AuditEvent.objects.filter(request_id__in=request_ids, event_type=AuditEvent.API_REQUEST,
                                     outcome="UKEY_ERROR").count() == len(refused)
    del sim


def test_rpc_signatures_are_checked_too(hardening_platforms):
    sim, platform = hardening_platforms("swap")
    access, secret = access_id_create(name="rpc client", scopes=["sign", "rpc"])
    info = certificate_load(certificate(platform, access, secret)["certificate_pem"])
    seen = {200: 0, 502: 0}
    for n in range(60):
        text = f"rpc order {n}"
        status, _, body = call(platform, "POST", "/api/v1/rpc",
                               {"_method": "cus-sec_SpcSignDataAsPEM", "args": {"inData": text}},
                               access=access, secret=secret)
        if status == 503:
            time.sleep(0.3)
            continue
        seen[status] += 1
        if status == 200:
            assert signature_verify(info, text.encode(), body["_args"]["Data"][0])
        else:
            assert body["code"] == "UKEY_ERROR", body
    assert seen[200] and seen[502], seen
    del sim
