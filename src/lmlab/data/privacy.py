"""Personal data in text: find it, check it, and mask it before training.

:func:`scrub` replaces each e-mail address, phone number, IP address,
payment card number, Chinese resident identity number and secret in a URL
with a placeholder naming its kind (``<EMAIL>``, ``<PHONE>``, ``<IP>``,
``<CARD>``, ``<ID_CN>``, ``<SECRET>``), so a model trained on the text keeps
the shape of a sentence ("write to <EMAIL>") without memorising whose it was.

Each kind is a regular expression that finds candidates and, where the
number carries one, a check that confirms them: the Luhn checksum of a card,
the ISO 7064 MOD 11-2 check character and the birth date of an identity
number, the 0-255 octets of an IPv4 address. The checks are what keep
ordinary numbers (years, dates, prices, version strings, ISBNs) unmasked.

The kinds run in a fixed order, because one number can look like several:
URL credentials go before e-mail addresses (``user:pw@host`` has an ``@``),
identity numbers and cards before phone numbers (an 18-digit identity number
holds a mobile-number-shaped run), and every placeholder is free of digits
and of ``@``, so a later pass never matches an earlier one's output.
Patterns are ASCII-only on purpose: in Python ``\\w`` and ``\\b`` treat Chinese
characters as letters, which would hide ``13812345678`` in "请拨打13812345678联系".
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections import Counter
from collections.abc import Callable

__all__ = [
    "KINDS",
    "PLACEHOLDERS",
    "card_issued",
    "cn_id_ok",
    "ip_ok",
    "luhn_ok",
    "scrub",
]

# The order the passes run in (see the module docstring for why).
KINDS = ("secret", "email", "ip", "id_cn", "card", "phone")
PLACEHOLDERS = {kind: f"<{kind.upper()}>" for kind in KINDS}


# --------------------------------------------------------------------------- validators


def luhn_ok(digits: str) -> bool:
    """Whether a digit string passes the Luhn checksum (ISO/IEC 7812 card numbers).

    From the right, every second digit is doubled (9 subtracted when that
    gives two digits); the total must be a multiple of 10.
    """
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# First two digits of a resident identity number: the province (GB/T 2260),
# 71 Taiwan, 81-83 Hong Kong, Macau and Taiwan residence permits.
CN_PROVINCES = frozenset(
    [11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46,
     50, 51, 52, 53, 54, 61, 62, 63, 64, 65, 71, 81, 82, 83]
)
# ISO 7064 MOD 11-2 weights of the 17 digits: 2^(17 - i) mod 11.
_CN_WEIGHTS = [pow(2, 17 - i, 11) for i in range(17)]


def _cn_id_shaped(number: str) -> bool:
    """A known province and a real birth date (1900 to today): an identity number, right or wrong.

    GB 11643-1999 layout: 6-digit region, YYYYMMDD birth date, 3-digit
    sequence, check character.
    """
    if len(number) != 18 or not number[:17].isdigit() or int(number[:2]) not in CN_PROVINCES:
        return False
    try:
        born = datetime.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:  # month 13, 30 February, ...
        return False
    return datetime.date(1900, 1, 1) <= born <= datetime.date.today()


def cn_id_ok(number: str) -> bool:
    """Whether an 18-character string is a valid Chinese resident identity number.

    It needs a known province code, a possible birth date and the ISO 7064
    MOD 11-2 check character (``X`` stands for 10; ``x`` is accepted too).
    """
    if not _cn_id_shaped(number):
        return False
    total = sum(int(d) * w for d, w in zip(number[:17], _CN_WEIGHTS, strict=True))
    check = (12 - total % 11) % 11
    return number[17].upper() == ("X" if check == 10 else str(check))


def ip_ok(address: str) -> bool:
    """Whether a string is an IPv4 or IPv6 address that can name a host.

    Loopback (127.0.0.1, ::1), unspecified (0.0.0.0, ::), multicast and
    reserved addresses (the 255.255.255.0 of a netmask) identify nobody and
    fill technical writing, so they are left alone.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_unspecified or ip.is_multicast or ip.is_reserved)


# --------------------------------------------------------------------------- patterns

# ASCII letters, digits and "_": the only word characters that may glue onto
# a match (a Chinese character next to a number is a boundary).
_AN = "A-Za-z0-9_"

# scheme://user:password@ : the whole user-info is masked (user names are
# often e-mail addresses), the scheme and host stay.
_URL_CREDENTIALS = re.compile(r"(?<![A-Za-z0-9+.-])([A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#@:]+:[^\s/?#@]+@")
# ?token=... / &api_key=... : the value is masked, the name stays. A value is
# ASCII URL characters (so a following Chinese sentence is not swallowed) and
# does not end with sentence punctuation.
_SECRET_PARAMS = (
    "token|access_token|refresh_token|id_token|auth_token|api_key|apikey|api-key|key|"
    "secret|client_secret|password|passwd|pwd|sig|signature|"
    "x-amz-signature|x-amz-security-token|x-amz-credential|x-goog-signature"
)
_QUERY_SECRET = re.compile(
    rf"(?<=[?&;])((?i:{_SECRET_PARAMS})=)[A-Za-z0-9_~%+/=:!$*@.-]*[A-Za-z0-9_~%+/=!$*@-]"
)
# RFC 5321 in practice: a dot-atom local part (an apostrophe inside, as in
# o'brien, but not at either end, where it quotes), a domain of labels and a
# letters-only top-level domain. Not right after "://" (that is a URL's
# user, as in ssh://git@host).
_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])(?<!://)"
    r"[A-Za-z0-9_%+-](?:[A-Za-z0-9._%+'-]{0,62}[A-Za-z0-9_%+-])?"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+([A-Za-z]{2,24})"
    r"(?![A-Za-z0-9-]|\.[A-Za-z0-9])"
)
# Retina image names (icon@2x.png) have the shape of an address.
_FILE_SUFFIXES = frozenset(["png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico", "js", "css"])
# Candidates only: ipaddress decides (8 groups, or fewer with one "::").
_IPV6 = re.compile(
    rf"(?<![{_AN}:.])(?:[0-9A-Fa-f]{{0,4}}:){{2,7}}"
    rf"(?:[0-9A-Fa-f]{{1,4}}|(?:\d{{1,3}}\.){{3}}\d{{1,3}})?(?![{_AN}:])"
)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
# Four octets, no leading zeros, not part of a longer dotted number (v1.2.3.4.5).
_IPV4 = re.compile(rf"(?<!\d\.)(?<![{_AN}]){_OCTET}(?:\.{_OCTET}){{3}}(?!\d|\.\d)")
_CN_ID = re.compile(rf"(?<![{_AN}])\d{{17}}[\dXx](?![{_AN}])")
# 13-19 digits, unbroken or in the groups printed on cards (4-4-4-4[-3],
# Amex 4-6-5, Diners 4-6-4) with one kind of separator.
_CARD = re.compile(
    rf"(?<![{_AN}.,+-])(?:\d{{13,19}}"
    r"|\d{4}(?P<s>[ -])\d{4}(?P=s)\d{4}(?P=s)\d{1,4}(?:(?P=s)\d{1,3})?"
    r"|\d{4}(?P<a>[ -])\d{6}(?P=a)\d{4,5})"
    rf"(?![{_AN}]|[.,-]\d)"
)
# Chinese mobile numbers: 1[3-9] and 9 more digits (3-4-4 when spaced), with an
# optional +86 / 0086 / 86 country code. Not after a currency sign or inside a
# longer or decimal number.
_PHONE_CN = re.compile(
    rf"(?<![{_AN}.,+$¥€£-])(?:(?:\+|00)?86[ -]?)?1[3-9]\d(?:[ -]?\d{{4}}){{2}}(?![{_AN}]|[.,]\d)"
)
# Chinese landlines: 0 + a 2-3 digit area code, a dash, 7-8 digits (010-51236699,
# 0311-86911999); local numbers never start with 0 or 1.
_PHONE_CN_LANDLINE = re.compile(
    rf"(?<![{_AN}.,+-])0[1-9]\d{{1,2}}-[2-9]\d{{6,7}}(?![{_AN}]|[.-]\d)"
)
# +CC and up to six groups, area codes in parentheses allowed; E.164 bounds
# the digits to 8-15 (checked after matching).
_PHONE_INTL = re.compile(
    rf"(?<![{_AN}+])\+[1-9]\d{{0,2}}(?:[ .-]?(?:\(\d{{1,4}}\)|\d{{1,5}})){{1,6}}(?![{_AN}]|[.,]\d)"
)
# North American: (555) 123-4567, 555-123-4567, 555.123.4567, optional leading 1.
# Area codes never start with 0 or 1, which keeps 2024-01-15 and 100-200-3000 out.
_PHONE_NA = re.compile(
    rf"(?<![{_AN}.+-])(?:1[ .-]?)?"
    r"(?:\([2-9]\d{2}\) ?\d{3}[-. ]\d{4}|[2-9]\d{2}(?P<s>[-.])\d{3}(?P=s)\d{4})"
    rf"(?![{_AN}]|[.-]\d)"
)


def _digits(s: str) -> str:
    return "".join(ch for ch in s if ch.isdigit())


def _email_ok(m: re.Match[str]) -> bool:
    return m.group(1).lower() not in _FILE_SUFFIXES


def _ipv6_ok(m: re.Match[str]) -> bool:
    # A digit rules out words made of hex letters (cafe::babe) and C++ scopes.
    return any(ch.isdigit() for ch in m.group()) and ip_ok(m.group())


def card_issued(digits: str) -> bool:
    """Whether a card number's length fits the issuer its first digits name (ISO/IEC 7812 IINs).

    One long number in ten passes Luhn by chance; the issuer table is what
    keeps out ISBN-13s (978...), timestamps (20020921233650, 1700000000000)
    and order numbers.
    """
    n, p2, p4 = len(digits), int(digits[:2]), int(digits[:4])
    if digits[0] == "4":
        return n in (13, 16, 19)  # Visa
    if p2 in (34, 37):
        return n == 15  # American Express
    if p2 in (30, 36, 38, 39):
        return n in (14, 16)  # Diners Club
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:
        return n == 16  # Mastercard
    if p2 == 35 or p2 == 50 or 56 <= p2 <= 69:
        return 16 <= n <= 19  # JCB; Maestro, Discover (6011, 64, 65), UnionPay (62)
    return False


def _card_ok(m: re.Match[str]) -> bool:
    digits = _digits(m.group())
    # An identity number with a wrong check character is still an identity
    # number, not a card (UnionPay's 62 is also Gansu's province code).
    return (13 <= len(digits) <= 19 and card_issued(digits) and luhn_ok(digits)
            and not _cn_id_shaped(digits))


def _intl_phone_ok(m: re.Match[str]) -> bool:
    return 8 <= len(_digits(m.group())) <= 15


# (kind, pattern, validator or None, replacement). A replacement may keep a
# group (the scheme of a URL, the name of a query parameter).
_PASSES: list[tuple[str, re.Pattern[str], Callable[[re.Match[str]], bool] | None, str]] = [
    ("secret", _URL_CREDENTIALS, None, r"\1<SECRET>@"),
    ("secret", _QUERY_SECRET, None, r"\1<SECRET>"),
    ("email", _EMAIL, _email_ok, "<EMAIL>"),
    ("ip", _IPV6, _ipv6_ok, "<IP>"),
    ("ip", _IPV4, lambda m: ip_ok(m.group()), "<IP>"),
    ("id_cn", _CN_ID, lambda m: cn_id_ok(m.group()), "<ID_CN>"),
    ("card", _CARD, _card_ok, "<CARD>"),
    ("phone", _PHONE_CN, None, "<PHONE>"),
    ("phone", _PHONE_CN_LANDLINE, None, "<PHONE>"),
    ("phone", _PHONE_INTL, _intl_phone_ok, "<PHONE>"),
    ("phone", _PHONE_NA, None, "<PHONE>"),
]
# A pass runs only when the text holds its trigger: most documents have no
# "@" and no "://", and a regex that cannot match still scans the whole text.
_TRIGGERS = {"secret": "=@", "email": "@", "ip": ".:"}
_DIGIT = re.compile(r"\d")  # every kind but secrets and e-mail addresses needs one


def scrub(text: str) -> tuple[str, Counter[str]]:
    """Mask personal data in ``text``.

    Args:
        text: any text; Chinese and other scripts are fine.

    Returns:
        The text with every match replaced by its kind's placeholder
        (``<EMAIL>``, ``<PHONE>``, ``<IP>``, ``<CARD>``, ``<ID_CN>``,
        ``<SECRET>``), and how many of each kind were replaced (keys from
        :data:`KINDS`; kinds with no match are absent).

    Examples:
        >>> scrub("请拨打13812345678联系张先生, or mail li@example.cn")
        ('请拨打<PHONE>联系张先生, or mail <EMAIL>', Counter({'email': 1, 'phone': 1}))
    """
    counts: Counter[str] = Counter()
    has_digit = _DIGIT.search(text) is not None
    for kind, pattern, valid, replacement in _PASSES:
        trigger = _TRIGGERS.get(kind)
        if trigger is not None and not any(ch in text for ch in trigger):
            continue
        if kind != "secret" and kind != "email" and not has_digit:
            continue

        def replace(m: re.Match[str], kind: str = kind, valid: Callable[..., bool] | None = valid,
                    replacement: str = replacement) -> str:
            if valid is not None and not valid(m):
                return m.group()
            counts[kind] += 1
            return m.expand(replacement)

        text = pattern.sub(replace, text)
    return text, counts
