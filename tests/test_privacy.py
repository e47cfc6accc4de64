"""Tests for lmlab.data.privacy: each kind of personal data found, checked and masked,
and the ordinary numbers around it left alone; then `lmlab corpus --scrub`."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from lmlab.cli import main
from lmlab.data.corpus import build_corpus, read_split
from lmlab.data.privacy import KINDS, card_issued, cn_id_ok, ip_ok, luhn_ok, scrub

# GB 11643-1999's own example number (check character X), and one made for
# these tests: Shenzhen, born 7 March 1990, check digit 7.
ID_X = "11010519491231002X"
ID_7 = "440302199003071237"
# Shijiazhuang, born 1 January 1985: it starts with a mobile-number-shaped run (13010219850).
ID_13 = "130102198501011239"

# (text, the text scrubbed): every kind, in English and in Chinese.
MASKED = [
    # e-mail addresses
    ("Write to john.doe@example.com.", "Write to <EMAIL>."),
    ("联系邮箱：zhang.san@example.cn，谢谢", "联系邮箱：<EMAIL>，谢谢"),
    ("<a href=\"mailto:li+news@mail.example.org\">", "<a href=\"mailto:<EMAIL>\">"),
    ("Seán O'Brien <sean.o'brien@example.ie>, 'bob@example.com'",
     "Seán O'Brien <<EMAIL>>, '<EMAIL>'"),
    # phone numbers: Chinese mobile, spaced, dashed, with +86; landline
    ("请拨打13812345678联系张先生", "请拨打<PHONE>联系张先生"),
    ("手机：138 1234 5678。", "手机：<PHONE>。"),
    ("电话 138-1234-5678 或 +86 139 1234 5678", "电话 <PHONE> 或 <PHONE>"),
    ("+8615012345678 (微信同号)", "<PHONE> (微信同号)"),
    ("酒店订房电话：0311-86911999", "酒店订房电话：<PHONE>"),
    # North American and international
    ("Call (555) 123-4567 or 555-123-4567 today.", "Call <PHONE> or <PHONE> today."),
    ("Toll-free 1-800-555-0199, cell: +1.714.928.5476", "Toll-free <PHONE>, cell: <PHONE>"),
    ("London +44 20 7946 0958; Berlin +49-30-1234567", "London <PHONE>; Berlin <PHONE>"),
    ("Office: +1 (555) 123-4567 ext. 12", "Office: <PHONE> ext. 12"),
    # IP addresses
    ("ssh from 192.168.1.20 failed, then 8.8.8.8 answered",
     "ssh from <IP> failed, then <IP> answered"),
    ("服务器地址203.0.113.7。", "服务器地址<IP>。"),
    ("Received: from dsl.206.191.151.102.example.net", "Received: from dsl.<IP>.example.net"),
    ("v6 2001:db8::8a2e:370:7334 and link fe80::1", "v6 <IP> and link <IP>"),
    ("listen on [2001:db8::1]:8080", "listen on [<IP>]:8080"),
    # payment cards (Luhn-valid test numbers of Visa, Amex, Mastercard, UnionPay)
    ("Visa 4111 1111 1111 1111 exp 12/27", "Visa <CARD> exp 12/27"),
    ("卡号4111-1111-1111-1111，有效期", "卡号<CARD>，有效期"),
    ("Amex 3782 822463 10005, MC 5555555555554444", "Amex <CARD>, MC <CARD>"),
    ("银联卡 6200000000000005", "银联卡 <CARD>"),
    # Chinese resident identity numbers
    (f"身份证号{ID_X}。", "身份证号<ID_CN>。"),
    (f"ID {ID_7.lower()} / {ID_X.lower()}", "ID <ID_CN> / <ID_CN>"),
    # secrets in URLs: the value goes, the URL stays readable
    ("postgres://alice:s3cr3t@db.example.com:5432/app", "postgres://<SECRET>@db.example.com:5432/app"),
    ("https://api.example.com/v1/items?access_token=abc123XYZ&page=2",
     "https://api.example.com/v1/items?access_token=<SECRET>&page=2"),
    ("GET /maps?q=paris&key=AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY HTTP/1.1",
     "GET /maps?q=paris&key=<SECRET> HTTP/1.1"),
    ("s3.amazonaws.com/b/f.pdf?X-Amz-Signature=9f8e7d6c&X-Amz-Expires=300",
     "s3.amazonaws.com/b/f.pdf?X-Amz-Signature=<SECRET>&X-Amz-Expires=300"),
    ("见 https://x.cn/a?password=hunter2。", "见 https://x.cn/a?password=<SECRET>。"),
]

# Text that looks numeric or technical but holds no personal data.
UNCHANGED = [
    "On 2024-01-15 the price rose to $1,299.99 (¥13800), up from 1,250 in 2023.",
    "2024年1月15日，价格为13800元，同比上涨12.5%，编号12345678901。",
    "Upgrade from version 1.2.3 to 10.0.1 (see section 3.2.1.4.5 of the guide).",
    "ISBN 978-3-16-148410-0, ISBN 9783161484100 and ISBN 0-306-40615-2.",
    "999.1.1.1 is not an address, nor is 256.10.10.10 or 01.02.03.04.",
    "localhost is 127.0.0.1 (or ::1); bind 0.0.0.0 with netmask 255.255.255.0.",
    "At 12:30:45 call std::vector<int>::size(); the MAC is 00:1A:2B:3C:4D:5E.",
    "Luhn fails: 4111 1111 1111 1112. Timestamps: 1700000000000, 20020921233650.",
    "身份证号110105194912310021（校验位错误），620102198502301234（2月30日）。",
    "No province 99: 990102198501011239.",
    "Date: Tue, 6 Aug 2002 11:51:02 +0100; call 555-1234 locally.",
    "See https://example.com/search?q=lmlab&page=2#top and ?keyword=llm&monkey=1.",
    "icon@2x.png and logo@3x.jpg; git clone ssh://git@github.com/org/repo.git",
    "订单号2024011513812345678已发货，运单号SF1234567890123。",
    "Modeline \"800x600\" 36 800 824 896 1024 600 601 603 625",
]


@pytest.mark.parametrize(("text", "expected"), MASKED)
def test_masked(text: str, expected: str) -> None:
    assert scrub(text)[0] == expected


@pytest.mark.parametrize("text", UNCHANGED)
def test_left_alone(text: str) -> None:
    assert scrub(text) == (text, Counter())


def test_counts_per_kind() -> None:
    text = (f"张先生 13812345678, zhang@example.cn, {ID_X}, 4111111111111111, 10.0.0.7, "
            "https://u:p@h.example.com/?token=t0k&sig=abc, li@example.org")
    masked, counts = scrub(text)
    assert counts == Counter(phone=1, email=2, id_cn=1, card=1, ip=1, secret=3)
    assert set(counts) <= set(KINDS)
    assert not any(ch.isdigit() for ch in masked)  # every number above was personal


def test_order_of_kinds() -> None:
    # A card is not a phone number, an identity number is not a phone number
    # followed by digits, and URL credentials are not an e-mail address.
    assert scrub("4111111111111111")[0] == "<CARD>"
    assert scrub("13010219850")[0] == "<PHONE>"
    assert scrub(f"证件{ID_13}")[0] == "证件<ID_CN>"
    assert scrub("ftp://bob:pw@files.example.com")[0] == "ftp://<SECRET>@files.example.com"
    # An e-mail address as a query value is masked as one, next to a token.
    assert scrub("https://x.com/?email=a@b.com&token=zz")[0] == (
        "https://x.com/?email=<EMAIL>&token=<SECRET>")
    # Placeholders are inert: scrubbing twice changes nothing more.
    for text, _ in MASKED:
        once = scrub(text)[0]
        assert scrub(once) == (once, Counter())


def test_validators() -> None:
    assert luhn_ok("4111111111111111") and luhn_ok("378282246310005")
    assert not luhn_ok("4111111111111112") and not luhn_ok("41x1")
    assert card_issued("4111111111111111") and card_issued("378282246310005")
    # An ISBN-13 (its own check digit right) that passes Luhn too: the issuer
    # table keeps it, and a 2002 timestamp, from being a card.
    assert luhn_ok("9783064061569") and not card_issued("9783064061569")
    assert scrub("ISBN 9783064061569")[1] == Counter()
    assert not card_issued("37828224631000")  # Amex has 15 digits
    assert cn_id_ok(ID_X) and cn_id_ok(ID_X.lower()) and cn_id_ok(ID_7)
    assert not cn_id_ok("110105194912310021")  # wrong check character
    assert not cn_id_ok("620102198502301234")  # 30 February, check character right
    assert not cn_id_ok("990102198501011239")  # no province 99
    assert not cn_id_ok("11010519491231002")  # 17 characters
    assert ip_ok("8.8.8.8") and ip_ok("2001:db8::1") and ip_ok("192.168.0.1")
    assert not ip_ok("127.0.0.1") and not ip_ok("::") and not ip_ok("999.1.1.1")


# --------------------------------------------------------------------------- in a corpus build

DOCS = [
    "请拨打13812345678联系张先生，或发邮件到 zhang.san@example.cn。",
    "Send the invoice to billing@example.com; card 4111 1111 1111 1111 was charged.",
    f"身份证号{ID_X}，登录 https://admin:hunter2@intranet.example.com/ 查看。",
    "The 2024-01-15 release (version 1.2.3) costs $19.99 and needs no account.",
    # after masking this is the first document again: an exact duplicate
    "请拨打13900001111联系张先生，或发邮件到 li.si@example.cn。",
]


@pytest.fixture(scope="module")
def scrubbed_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("scrub")
    src = root / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in DOCS),
                   encoding="utf-8")
    out = root / "corpus"
    assert main(["corpus", str(src), "--scrub", "--out", str(out)]) == 0
    return out, src.read_text(encoding="utf-8")


def test_corpus_scrub_counts(scrubbed_corpus: tuple[Path, str]) -> None:
    out, _ = scrubbed_corpus
    meta = json.loads((out / "corpus.json").read_text(encoding="utf-8"))
    assert meta["settings"]["scrub"] is True
    stats = meta["stats"]
    # Counted in the documents kept: the masked duplicate adds nothing.
    assert stats["scrubbed"] == {"secret": 1, "email": 2, "ip": 0, "id_cn": 1, "card": 1,
                                 "phone": 1}
    assert stats["duplicates_dropped"] == 1
    docs = list(read_split(out, "train")) + list(read_split(out, "val"))
    assert sorted(docs) == sorted([
        "请拨打<PHONE>联系张先生，或发邮件到 <EMAIL>。",
        "Send the invoice to <EMAIL>; card <CARD> was charged.",
        "身份证号<ID_CN>，登录 https://<SECRET>@intranet.example.com/ 查看。",
        DOCS[3],
    ])


def test_corpus_scrub_printout(scrubbed_corpus: tuple[Path, str],
                               capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = scrubbed_corpus
    src = out.parent / "docs.jsonl"
    assert main(["corpus", str(src), "--scrub", "--out", str(out), "--overwrite"]) == 0
    printed = capsys.readouterr().out
    assert ("scrubbed: 1 secret, 2 email, 0 ip, 1 id_cn, 1 card, 1 phone (6 masked)"
            in printed)


def test_corpus_without_scrub_keeps_text(tmp_path: Path) -> None:
    src = tmp_path / "a.txt"
    src.write_text(DOCS[0] + "\n", encoding="utf-8")
    stats = build_corpus([src], tmp_path / "c", progress=False)
    assert stats.scrubbed == {}
    assert list(read_split(tmp_path / "c", "train")) == [DOCS[0]]
