"""Frame building and parsing against docs/card-protocol.md."""

import json

import pytest

from ukey import protocol


def test_request_frame_has_method_id_and_args():
    frame = json.loads(protocol.build_request("cus-sec_SpcSignDataAsPEM", 7, {"inData": "数据"}))
    assert frame == {"_method": "cus-sec_SpcSignDataAsPEM", "_id": 7, "args": {"inData": "数据"}}


def test_request_id_zero_is_reserved_for_the_handshake():
    with pytest.raises(ValueError):
        protocol.build_request("cus-sec_SpcGetCertNo", 0)


def test_handshake_frame_is_recognised():
    text = '{"_id":0,"_method":"open","_status":"00","_args":{"Result":true,"Data":[],"Error":[]}}'
    frame = protocol.parse_frame(text)
    assert frame.kind == "handshake" and frame.id == 0
    assert protocol.parse_frame(protocol.build_handshake()).kind == "handshake"


def test_success_response_envelope():
    text = '{"_id":3,"_method":"cus-sec_SpcGetCertNo","_status":"00","_args":{"Result":true,"Data":["013e20e7"],"Error":[]}}'
    frame = protocol.parse_frame(text)
    assert frame.kind == "response"
    assert frame.id == 3 and frame.method == "cus-sec_SpcGetCertNo" and frame.status == "00"
    assert frame.result.ok is True and frame.result.data == ["013e20e7"] and frame.result.errors == []


def test_failure_response_carries_error_list_and_code():
    text = json.dumps(
        {"_id": 4, "_method": "cus-sec_SpcSignDataAsPEM", "_status": "00",
         "_args": {"Result": False, "Data": [], "Error": ["[读卡器底层库]复位读卡器失败:错误码=50070", "Err:Custom50070"]}},
        ensure_ascii=False,
    )
    result = protocol.parse_frame(text).result
    assert result.ok is False
    assert result.errors == ["[读卡器底层库]复位读卡器失败:错误码=50070", "Err:Custom50070"]
    assert result.error_code == "Custom50070"
    assert result.message == "[读卡器底层库]复位读卡器失败:错误码=50070"


def test_string_id_in_a_request_is_read_as_an_integer():
    frame = protocol.parse_frame('{"_method":"cus-sec_SpcGetCertNo","_id":"12","args":{}}')
    assert frame.kind == "request" and frame.id == 12


def test_string_id_in_a_response_is_read_as_an_integer():
    frame = protocol.parse_frame('{"_id":"5","_method":"m","_status":"00","_args":{"Result":true,"Data":[],"Error":[]}}')
    assert frame.kind == "response" and frame.id == 5


def test_bare_result_without_envelope():
    frame = protocol.parse_frame('{"Result":false,"Data":[],"Error":["bad","Err:Base50000"]}')
    assert frame.kind == "bare"
    assert frame.result.ok is False and frame.result.error_code == "Base50000"


@pytest.mark.parametrize(
    "text",
    ['{"hello":"world"}', '{"_id":-1,"_args":{}}', '{"_id":"x","_method":"m","_status":"00","_args":{}}'],
)
def test_unknown_frames(text):
    assert protocol.parse_frame(text).kind == "unknown"


@pytest.mark.parametrize("text", ["not json", "[1,2]", '"text"', b"\xff\xfe"])
def test_non_object_frames_raise(text):
    with pytest.raises(protocol.FrameError):
        protocol.parse_frame(text)


def test_response_round_trip():
    result = protocol.card_error("参数检查失败,传入的args中必须包含必要的非空白参数:inData", "Base", 50000)
    frame = protocol.parse_frame(protocol.build_response(9, "cus-sec_SpcSignDataAsPEM", result))
    assert frame.kind == "response" and frame.id == 9 and frame.result == result
    assert json.loads(protocol.build_response(9, "m", result))["_status"] == "00"


def test_redact_args_masks_the_pin():
    assert protocol.redact_args({"inData": "x", "passwd": "12345678"}) == {"inData": "x", "passwd": "***"}
