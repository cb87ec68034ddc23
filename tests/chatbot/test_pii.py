"""Tests for chatbot.pii: what is redacted, as which kind, what is left alone, and robustness."""

from __future__ import annotations

import random

import pytest

from chatbot.pii import PLACEHOLDERS, Redaction, pii_redact

EMAILS = [
    "jane@example.com",
    # Issue 10: written to dodge filters, these reached the LLM and the transcript.
    "jane(at)example.com",
    "jane [at] example [dot] com",
    "jane{AT}mail.example(dot)org",
    "jane＠example.com",
    "john.doe+shop@example.com",
    "support@mail.eu.example.co.uk",
    "SUPPORT@EXAMPLE.COM",
    "first_last-99@my-shop.io",
    "13812345678@qq.com",  # digits that look like a phone are still part of the address
]

CARDS = [
    "4111 1111 1111 1111",
    "4111.1111.1111.1111",  # issue 10
    "4111-1111-1111-1111",
    "4111111111111111",
    "5555555555554444",
    "6011000990139424",
    "378282246310005",  # Amex, 15 digits
    "3782 822463 10005",  # Amex as printed, 4-6-5
    "30569309025904",  # Diners, 14 digits
    "4222222222222",  # old Visa, 13 digits
    "6217001234567890122",  # UnionPay, 19 digits
    "6217 0012 3456 7890 122",
    "4111 1111-1111 1111",  # mixed separators, as people type
]

CN_IDS = [
    "11010519491231002X",
    "11010519491231002x",
    "310115199003071239",
    "440304198512120031",
    "110105198001010753",  # also passes Luhn, so it must not be taken for a card
    "11010519800101069X",  # its 17 digits pass Luhn too
    "130503670401001",  # old 15-digit form, born 1967-04-01
]

SSNS = ["123-45-6789", "078-05-1120"]

PHONES = [
    "+44 20 7946 0958",
    "+1 (415) 555-2671",
    "+1 415 555 2671",
    "+86 138 1234 5678",
    "+86-138-1234-5678",
    "+8613812345678",
    "0044 20 7946 0958",
    "(415) 555-2671",
    "415-555-2671",
    "415.555.2671",
    "1 (415) 555-2671",
    "1-800-555-0199",
    "13812345678",
    "138-1234-5678",
    "138 1234 5678",
    "+86 13812345678",
    "010-12345678",
    "021 6123 4567",
    "0755-12345678",
    "(010) 12345678",
]

SAMPLES = (
    [(value, "email") for value in EMAILS]
    + [(value, "card") for value in CARDS]
    + [(value, "id") for value in CN_IDS + SSNS]
    + [(value, "phone") for value in PHONES]
)

NOT_PII = [
    "Where is my order #A12345?",
    "meet me at home (at) noon",
    "the (at) sign and (dot) too",
    "version 4111.1111.1111.1112",  # dots, but Luhn fails
    "order 123456 has not arrived",
    "Orders 1234567 and 7654321",
    "Invoice INV-2026-000123 is wrong",
    "My order #4155552671 is late",
    "It costs $49.99",
    "价格是99元",
    "Delivery on 2026-11-23",
    "2026年11月23日送达",
    "Open at 10:30, closed at 18:00",
    "Returns within 30 days",
    "It took 2 hours",
    "Since 2026",
    "Ship to SW1A 1AA, London",
    "邮编100080",
    "ZIP 94105",
    "Running version 10.4.12 (build 2.10.3-rc1)",
    "IP 192.168.1.1",
    "order 4111111111111112",  # 16 digits, Luhn fails
    "order 1234567890123456",  # 16 digits, Luhn fails
    "4111 1111 1111 1112",
    "a@b",
    "write to user@localhost",
    "ping @support on the forum",
    "",
    "Hello, I need help with my delivery.",
    "你好，我的包裹还没到。",
]


def _redacted_alone(value: str, kind: str) -> None:
    result = pii_redact(value)
    assert result == Redaction(text=PLACEHOLDERS[kind], found={kind: 1})


@pytest.mark.parametrize(("value", "kind"), SAMPLES)
def test_each_format_alone_is_replaced_by_its_placeholder(value, kind):
    _redacted_alone(value, kind)


@pytest.mark.parametrize(("value", "kind"), SAMPLES)
def test_each_format_in_english_sentence(value, kind):
    result = pii_redact(f"Hi, it is {value}. Thanks!")
    assert result.text == f"Hi, it is {PLACEHOLDERS[kind]}. Thanks!"
    assert result.found == {kind: 1}


@pytest.mark.parametrize(("value", "kind"), SAMPLES)
def test_each_format_in_chinese_text_without_spaces(value, kind):
    result = pii_redact(f"你好，我的是{value}，请回电")
    assert result.text == f"你好，我的是{PLACEHOLDERS[kind]}，请回电"
    assert result.found == {kind: 1}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("我的手机号是13812345678，请回电", "我的手机号是[phone]，请回电"),
        ("电话010-12345678谢谢", "电话[phone]谢谢"),
        ("电话：021-61234567转123", "电话：[phone]转123"),
        ("微信13812345678哦", "微信[phone]哦"),
        ("身份证号11010519491231002X。", "身份证号[id]。"),
        ("卡号4111111111111111谢谢", "卡号[card]谢谢"),
        ("邮箱是john@example.com谢谢", "邮箱是[email]谢谢"),
    ],
)
def test_chinese_text_without_spaces(text, expected):
    assert pii_redact(text).text == expected


@pytest.mark.parametrize(
    ("text", "expected", "found"),
    [
        (
            "Email jane@example.com, card 4111 1111 1111 1111, call +1 (415) 555-2671.",
            "Email [email], card [card], call [phone].",
            {"email": 1, "card": 1, "phone": 1},
        ),
        (
            "我叫张三，身份证11010519491231002X，手机13812345678，邮箱zhang@example.cn，卡号6217001234567890122。",
            "我叫张三，身份证[id]，手机[phone]，邮箱[email]，卡号[card]。",
            {"id": 1, "phone": 1, "email": 1, "card": 1},
        ),
        (
            "SSN 123-45-6789 and home 415-555-2671, office 415.555.2671",
            "SSN [id] and home [phone], office [phone]",
            {"id": 1, "phone": 2},
        ),
        ("a@example.com b@example.org", "[email] [email]", {"email": 2}),
        ("13812345678,13912345678", "[phone],[phone]", {"phone": 2}),
        ("电话：010-12345678/13812345678", "电话：[phone]/[phone]", {"phone": 2}),
        (
            "Order #A12345 of $49.99 on 2026-11-23: card 4111-1111-1111-1111",
            "Order #A12345 of $49.99 on 2026-11-23: card [card]",
            {"card": 1},
        ),
        ("qty 2 4111 1111 1111 1111 2 items", "qty 2 [card] 2 items", {"card": 1}),
    ],
)
def test_several_pii_in_one_message(text, expected, found):
    assert pii_redact(text) == Redaction(text=expected, found=found)


@pytest.mark.parametrize("text", NOT_PII)
def test_not_pii_is_returned_unchanged(text):
    result = pii_redact(text)
    assert result.text is text
    assert result.found == {}


@pytest.mark.parametrize(
    ("number", "is_card"),
    [
        ("4111111111111111", True),
        ("4111111111111112", False),
        ("5555555555554444", True),
        ("5555555555554445", False),
        ("378282246310005", True),
        ("378282246310006", False),
        ("6217001234567890122", True),
        ("6217001234567890123", False),
    ],
)
def test_card_numbers_are_luhn_checked(number, is_card):
    result = pii_redact(f"card {number}")
    if is_card:
        assert result == Redaction(text="card [card]", found={"card": 1})
    else:
        assert result == Redaction(text=f"card {number}", found={})


@pytest.mark.parametrize(
    "number",
    [
        "41111111111111111111",  # 20 contiguous digits are not a card
        "0000000000000000",  # Luhn-valid, but no card starts with 0
        "41 1111 1111 1111 11",  # Luhn-valid digits in a grouping no card uses
        "+4111111111111111",  # "+" starts a phone number with its country code
        "4111 1111-1111",  # 12 digits
    ],
)
def test_luhn_valid_digits_that_are_not_cards(number):
    assert pii_redact(number).found.get("card") is None


def test_card_followed_by_another_number_keeps_that_number():
    assert pii_redact("4111111111111111 1111") == Redaction(text="[card] 1111", found={"card": 1})


@pytest.mark.parametrize(
    ("number", "is_id"),
    [
        ("11010519491231002X", True),
        ("110105194912310021", False),  # check character should be X
        ("11010519491231002Y", False),
        ("310115199003071239", True),
        ("310115199003071238", False),
        ("110105209912310010", False),  # checksum right, born in 2099
        ("110105189912310015", False),  # checksum right, born in 1899
        ("110105198013010013", False),  # checksum right, month 13
        ("010105198001010012", False),  # checksum right, no region starts with 0
        ("130503670401001", True),
        ("130503671301001", False),  # 15-digit form with month 13
        ("130503670230001", False),  # 15-digit form with 30 February
    ],
)
def test_chinese_resident_id_checksum_and_birth_date(number, is_id):
    result = pii_redact(f"ID {number}")
    if is_id:
        assert result == Redaction(text="ID [id]", found={"id": 1})
    else:
        assert result == Redaction(text=f"ID {number}", found={})


def test_digits_after_plus_are_not_an_id():
    # These 15 digits hold a plausible date, but after "+" they are a phone number with country code 43.
    assert "id" not in pii_redact("call +435957720806492").found


def test_id_check_character_x_must_not_start_a_word():
    assert pii_redact("11010519491231002Xyz").found == {}


@pytest.mark.parametrize(
    ("ssn", "is_id"),
    [
        ("123-45-6789", True),
        ("000-12-3456", False),
        ("666-12-3456", False),
        ("900-12-3456", False),
        ("999-12-3456", False),
        ("123-00-4567", False),
        ("123-45-0000", False),
        ("1123-45-6789", False),
        ("123-45-67890", False),
    ],
)
def test_us_ssn_rules(ssn, is_id):
    result = pii_redact(f"SSN {ssn}")
    if is_id:
        assert result == Redaction(text="SSN [id]", found={"id": 1})
    else:
        assert result == Redaction(text=f"SSN {ssn}", found={})


@pytest.mark.parametrize(
    ("text", "expected", "found"),
    [
        # A card or ID is a long digit run that the phone matcher must not eat part of.
        ("4111111111111111", "[card]", {"card": 1}),
        ("11010519491231002X", "[id]", {"id": 1}),
        ("110105198001010753", "[id]", {"id": 1}),
        # The phone matcher reads these 15 digits as a Chinese number; they are an old-form ID.
        ("身份证113362540901712谢谢", "身份证[id]谢谢", {"id": 1}),
        # An address holding a phone number is one email, not an email and a phone.
        ("13812345678@qq.com", "[email]", {"email": 1}),
        ("card 4111111111111111 phone 13812345678", "card [card] phone [phone]", {"card": 1, "phone": 1}),
    ],
)
def test_detection_order(text, expected, found):
    assert pii_redact(text) == Redaction(text=expected, found=found)


@pytest.mark.parametrize(
    ("text", "expected", "found"),
    [
        # Each ID is only found once the one after it is replaced: a digit right after the check
        # character hides it. The detectors rerun until nothing more is found.
        ("11010519491231002X11010519491231002X", "[id][id]", {"id": 2}),
        # "b.com4111..." is no domain until the card is replaced.
        ("a@b.com4111111111111111", "[email][card]", {"card": 1, "email": 1}),
    ],
)
def test_pii_glued_together_is_all_redacted(text, expected, found):
    assert pii_redact(text) == Redaction(text=expected, found=found)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Write to SUPPORT@EXAMPLE.COM.", "Write to [email]."),
        ("(jane@example.com)", "([email])"),
        ("...jane@example.com", "...[email]"),
        ("see https://shop.example.com/help or help@shop.example.com", "see https://shop.example.com/help or [email]"),
    ],
)
def test_email_edges(text, expected):
    assert pii_redact(text).text == expected


@pytest.mark.parametrize(
    "text",
    [text for text, _ in SAMPLES]
    + [
        "Email jane@example.com, card 4111 1111 1111 1111, call +1 (415) 555-2671.",
        "我叫张三，身份证11010519491231002X，手机13812345678。",
        "[email] [phone] [card] [id]",
        "1 (415) 555-2671 x",
    ]
    + NOT_PII,
)
def test_redaction_is_idempotent(text):
    once = pii_redact(text).text
    twice = pii_redact(once)
    assert twice.text == once
    assert twice.found == {}


def test_placeholders_are_not_pii():
    text = "[email] [phone] [card] [id]"
    result = pii_redact(text)
    assert result.text is text
    assert result.found == {}


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("0" * 2000, {}),
        ("7" * 2000, {}),
        ("a@" * 1000, {}),
        ("a" * 2000, {}),
        ("@" * 2000, {}),
        ("1 " * 1000, {}),
        ("1-" * 1000, {}),
        ("+1" * 1000, {}),
        ("(" * 2000, {}),
        ("x@y." * 500, {}),
        ("4111 1111 1111 1111 " * 100, {"card": 100}),
        ("13812345678 " * 166, {"phone": 166}),
        ("11010519491231002X " * 105, {"id": 105}),
    ],
)
def test_adversarial_2000_character_inputs(text, found):
    assert len(text) <= 2000
    result = pii_redact(text)
    assert result.found == found
    if not found:
        assert result.text is text
    else:
        placeholder = PLACEHOLDERS[next(iter(found))]
        assert result.text.count(placeholder) == sum(found.values())
        assert not any(character.isdigit() for character in result.text)


def test_random_digit_string_of_2000_characters():
    digits = "".join(random.Random(7).choice("0123456789") for _ in range(2000))
    # One run of 2000 digits is neither a card, an ID nor a phone number.
    assert pii_redact(digits) == Redaction(text=digits, found={})


def _random_unicode(rng: random.Random) -> str:
    length = rng.randint(0, 80)
    if rng.random() < 0.5:
        # Any code point, surrogates included.
        return "".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(length))
    # Characters the detectors care about, so that near-misses are exercised too.
    return "".join(rng.choice("0123456789 -+().@#/_xX中文，１２\n") for _ in range(length))


def test_fuzz_never_raises_and_is_consistent():
    rng = random.Random(20261123)
    kinds = set(PLACEHOLDERS)
    for _ in range(500):
        text = _random_unicode(rng)
        result = pii_redact(text)
        assert isinstance(result.text, str)
        assert set(result.found) <= kinds
        assert all(count > 0 for count in result.found.values())
        if not result.found:
            assert result.text is text
        else:
            # Every reported span left its placeholder behind.
            for kind, count in result.found.items():
                assert result.text.count(PLACEHOLDERS[kind]) >= count
        assert pii_redact(result.text).text == result.text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to jane.doe at mail dot example dot org today", "write to [email] today"),
        ("jane at example dot com", "[email]"),
        ("卡号４１１１１１１１１１１１１１１１，谢谢", "卡号[card]，谢谢"),
        ("我的手机是１３８１２３４５６７８", "我的手机是[phone]"),
        ("身份证１１０１０５１９４９１２３１００２Ｘ", "身份证[id]"),
        ("card 4111.1111.1111.1111 please", "card [card] please"),
        ("card 4111111111111111", "card [card]"),
    ],
)
def test_worded_emails_and_full_width_digits_are_redacted(text, expected):
    assert pii_redact(text).text == expected


@pytest.mark.parametrize("text", ["meet me at noon", "look at example.com for sizes", "we are at home dot"])
def test_at_in_ordinary_sentences_is_not_an_email(text):
    assert "[email]" not in pii_redact(text).text
