"""PII masking (mosslm.data.pii): every kind, its look-alikes, and Chinese text around it."""

import pytest

from mosslm.data.pii import ALL, id_card_valid, mask_pii

VALID_ID = "11010519491231002X"     # check character X (MOD 11-2)
VALID_ID_DIGIT = "440308199901010012"  # check character 2
INVALID_ID = "110105194912310021"   # same number, wrong check character


def masked(text, kinds=ALL):
    return mask_pii(text, kinds)[0]


def test_id_checksum():
    assert id_card_valid(VALID_ID) and id_card_valid(VALID_ID.lower()) and id_card_valid(VALID_ID_DIGIT)
    assert not id_card_valid(INVALID_ID)
    assert not id_card_valid("44030819990101001")


@pytest.mark.parametrize("text, expected, kind", [
    ("邮箱zhang.san+work@mail.example.com.cn谢谢", "邮箱<EMAIL>谢谢", "EMAIL"),
    ("Write to a@b.co.", "Write to <EMAIL>.", "EMAIL"),
    ("我的手机号是13812345678，请回电", "我的手机号是<PHONE>，请回电", "PHONE"),
    ("电话138-1234-5678。", "电话<PHONE>。", "PHONE"),
    ("电话：+86 138 1234 5678", "电话：<PHONE>", "PHONE"),
    ("0086-19912345678号码", "<PHONE>号码", "PHONE"),
    ("call +1 (415) 555-2671.", "call <PHONE>.", "PHONE"),
    ("London +44 20 7946 0958", "London <PHONE>", "PHONE"),
    (f"身份证号{VALID_ID}已登记", "身份证号<ID_CARD>已登记", "ID_CARD"),
    (f"ID {VALID_ID_DIGIT}", "ID <ID_CARD>", "ID_CARD"),
    ("服务器IP是192.168.1.10。", "服务器IP是<IP>。", "IP"),
    ("host 8.8.8.8, port 53", "host <IP>, port 53", "IP"),
    ("地址2001:0db8:85a3:0000:0000:8a2e:0370:7334结束", "地址<IP>结束", "IP"),
    ("链路fe80::1ff:fe23:4567:890a和2001:db8::1", "链路<IP>和<IP>", "IP"),
])
def test_each_kind_is_masked_with_chinese_around(text, expected, kind):
    out, counts = mask_pii(text)
    assert out == expected
    assert set(counts) == {kind} and sum(counts.values()) == expected.count(f"<{kind}>")


def test_invalid_id_checksum_is_not_an_id_card():
    out, counts = mask_pii(f"号码{INVALID_ID}无效")
    assert out == f"号码{INVALID_ID}无效" and counts["ID_CARD"] == 0


@pytest.mark.parametrize("text", [
    "会议在2026-12-01举行，票价¥1,234.56，共3000人。",
    "1234*5678 = 7006652, 12:30:45, 3.14159",
    "version v1.2.3.4 of std::vector, ::1",
    "256.1.1.1 and 10.0.0.1.5 and 1.2.3",
    "订单号138123456789012，序号00000000",
    "1+23456789012 is arithmetic, +1234567 is too short",
    "a list: 13, 14, 15; 2^10=1024",
])
def test_look_alikes_are_left_alone(text):
    assert mask_pii(text) == (text, {})


def test_bare_ipv4_like_version_is_masked_as_documented():
    assert masked("release 1.2.3.4") == "release <IP>"


def test_several_kinds_counted_and_kinds_selectable():
    text = f"联系我：li@example.org 或 13912345678，身份证{VALID_ID}，IP 10.0.0.1，邮箱 wang@example.cn"
    out, counts = mask_pii(text)
    assert out == "联系我：<EMAIL> 或 <PHONE>，身份证<ID_CARD>，IP <IP>，邮箱 <EMAIL>"
    assert counts == {"EMAIL": 2, "PHONE": 1, "ID_CARD": 1, "IP": 1}
    only_mail, counts = mask_pii(text, kinds=["EMAIL"])
    assert "13912345678" in only_mail and "<EMAIL>" in only_mail and counts == {"EMAIL": 2}
    with pytest.raises(ValueError, match="unknown PII kind"):
        mask_pii(text, kinds=["SSN"])


def test_masking_is_idempotent_and_keeps_protocol_text():
    text = '<|Results|>:\nSearch("联系 13812345678") =>\n<|1|>: "mail a@b.com"\n<eor>'
    once = masked(text)
    assert once == '<|Results|>:\nSearch("联系 <PHONE>") =>\n<|1|>: "mail <EMAIL>"\n<eor>'
    assert masked(once) == once


def test_masker_counts_until_taken():
    from mosslm.data.pii import Masker

    m = Masker()
    assert m("mail a@b.com") == "mail <EMAIL>" and m("mail a@b.com") == "mail <EMAIL>"
    assert m.take() == {"EMAIL": 2} and m.take() == {}
    assert Masker(kinds=["IP"])("a@b.com 10.0.0.1") == "a@b.com <IP>"
    with pytest.raises(ValueError):
        Masker(kinds=["NAME"])
