"""The sandbox's WeChat Pay API (/mmpaymkttransfers/...): XML in, XML out, as the red-packet calls answer."""

from __future__ import annotations

import xml.etree.ElementTree as ET  # noqa: S405 - parses bodies from the sandbox's own callers
from collections.abc import Callable
from typing import Any

from siyu.sandbox.payments import PayError
from siyu.sandbox.state import SandboxState

SEND_REDPACK = "mmpaymkttransfers/sendworkwxredpack"
QUERY_REDPACK = "mmpaymkttransfers/queryworkwxredpack"
# Never kept in the request log: the signatures are made with the merchant's secret key.
SECRET_FIELDS = {"sign", "workwx_sign"}
ERR_CODE_DES = {
    "SYSTEMERROR": "请求已受理，请稍后使用原单号查询发放结果",
    "FREQ_LIMIT": "超过频率限制，请稍后再试",
}


def parse_xml(raw: bytes) -> dict[str, str] | None:
    """A flat `<xml><field>value</field>...</xml>` body as a dict; None when it is not one."""
    try:
        root = ET.fromstring(raw)  # noqa: S314 - expat here resolves no external entities
    except ET.ParseError:
        return None
    if root.tag != "xml":
        return None
    return {child.tag: (child.text or "").strip() for child in root}


def to_xml(fields: dict[str, Any]) -> str:
    """A reply as WeChat Pay writes it: strings in CDATA, numbers bare."""
    parts = []
    for name, value in fields.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            parts.append(f"<{name}>{int(value)}</{name}>")
        else:
            text = str(value).replace("]]>", "]]]]><![CDATA[>")
            parts.append(f"<{name}><![CDATA[{text}]]></{name}>")
    return "<xml>" + "".join(parts) + "</xml>"


def fail_reply(fields: dict[str, str], err_code: str, err_code_des: str) -> dict[str, Any]:
    """Business failure: the call got through (return_code SUCCESS), the payout did not."""
    return {
        "return_code": "SUCCESS",
        "return_msg": err_code_des,
        "result_code": "FAIL",
        "err_code": err_code,
        "err_code_des": err_code_des,
        **{k: fields[k] for k in ("mch_billno", "mch_id", "wxappid", "re_openid") if k in fields},
        **({"total_amount": fields["total_amount"]} if "total_amount" in fields else {}),
    }


def fault_reply(fields: dict[str, str], err_code: str | None) -> dict[str, Any]:
    """What an armed fault answers on a payout path (SYSTEMERROR unless it names a code)."""
    code = err_code or "SYSTEMERROR"
    return fail_reply(fields, code, ERR_CODE_DES.get(code, f"sandbox fault {code}"))


def bad_xml_reply() -> dict[str, Any]:
    return {"return_code": "FAIL", "return_msg": "XML_ERROR: the body is not XML"}


def send_redpack(state: SandboxState, fields: dict[str, str]) -> dict[str, Any]:
    payout = state.payments.send_redpack(fields)
    return {
        "return_code": "SUCCESS",
        "return_msg": "发放成功",
        "result_code": "SUCCESS",
        "err_code": "SUCCESS",
        "err_code_des": "发放成功",
        "mch_billno": payout["mch_billno"],
        "mch_id": payout["mch_id"],
        "wxappid": payout["wxappid"],
        "re_openid": payout["re_openid"],
        "total_amount": payout["total_amount"],
        "send_listid": payout["send_listid"],
        "sender_name": payout["sender_name"],
    }


def query_redpack(state: SandboxState, fields: dict[str, str]) -> dict[str, Any]:
    payout = state.payments.query(fields)
    return {
        "return_code": "SUCCESS",
        "return_msg": "OK",
        "result_code": "SUCCESS",
        "err_code": "SUCCESS",
        "err_code_des": "OK",
        "mch_billno": payout["mch_billno"],
        "mch_id": payout["mch_id"],
        "detail_id": payout["send_listid"],
        "status": payout["status"],
        "send_type": "API",
        "total_amount": payout["total_amount"],
        "send_time": int(payout["send_time"]),
        "openid": payout["re_openid"],
        "wishing": payout["wishing"],
        "act_name": payout["act_name"],
        "remark": payout["remark"],
    }


PAY_API: dict[str, Callable[[SandboxState, dict[str, str]], dict[str, Any]]] = {
    SEND_REDPACK: send_redpack,
    QUERY_REDPACK: query_redpack,
}


def answer(state: SandboxState, api: str, fields: dict[str, str]) -> dict[str, Any]:
    """Run one payout call against the state: the reply fields, success or failure."""
    with state.lock:
        try:
            return PAY_API[api](state, fields)
        except PayError as error:
            return fail_reply(fields, error.err_code, error.err_code_des)
