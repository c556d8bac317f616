"""Hypothesis strategies: other spellings of one network, address or host.

Each strategy takes the canonical value and draws a text that a careless
parser could read as that same value (or as one that compares differently to
a list while meaning the same thing to a signature or a socket).
"""

from __future__ import annotations

from hypothesis import strategies as st

# Digit sets other than ASCII that str.isdigit() / int() accept.
DIGIT_ZEROS = (0xFF10, 0x0660, 0x06F0, 0x0966, 0x09E6, 0x0E50, 0x1D7CE, 0x1D7D8, 0x1D7EC, 0x1D7F6)
BLANKS = (" ", "\t", "\n", "\u00a0", "\u2003", "\u200b", "\ufeff")


def _other_digits(text: str, zero: int) -> str:
    return "".join(chr(zero + int(c)) if c.isdigit() and c.isascii() else c for c in text)


def _fullwidth(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


@st.composite
def numbers(draw: st.DrawFn, value: int) -> str:
    """Spellings of a non-negative integer that are not its canonical decimal."""
    text = str(value)
    return draw(st.one_of(
        st.integers(1, 80).map(lambda n: "0" * n + text),
        st.sampled_from(DIGIT_ZEROS).map(lambda z: _other_digits(text, z)),
        st.sampled_from(["+", "-0", "+0"]).map(lambda s: s + text),
        st.sampled_from(BLANKS).flatmap(lambda b: st.sampled_from([b + text, text + b])),
        st.just(hex(value)), st.just(hex(value).upper().replace("0X", "0x")),
        st.just(f"{value}.0"), st.just(f"{value:e}"), st.just(f"{value:_}") if value >= 1000 else st.just(f"0{value}"),
        st.sampled_from([2**64, 2**256, 2**255, 2**256 * 7]).map(lambda m: str(value + m)),
        st.just(_fullwidth(text)),
    ))


@st.composite
def networks(draw: st.DrawFn, chain: int, names: tuple[str, ...] = ()) -> str:
    """Spellings of ``eip155:<chain>`` other than the canonical one."""
    canonical = f"eip155:{chain}"
    return draw(st.one_of(
        numbers(chain).map(lambda n: "eip155:" + n),
        st.sampled_from(["EIP155", "Eip155", "eip155 ", " eip155", "eip155\u200b", "eip\uff11\uff15\uff15"]).map(
            lambda ns: f"{ns}:{chain}"),
        st.sampled_from(BLANKS).flatmap(lambda b: st.sampled_from([b + canonical, canonical + b])),
        st.just(_fullwidth(canonical)),
        st.just(canonical.replace(":", "\uff1a")),
        st.just(f"eip155:{chain}:0"),
        *(st.just(n) for n in names),
    ))


def _mixed_case(hex40: str, flips: list[bool]) -> str:
    return "".join(c.upper() if f and c.isalpha() else c for c, f in zip(hex40, flips, strict=False))


@st.composite
def addresses(draw: st.DrawFn, checksummed: str) -> str:
    """Spellings of an EVM address: with and without ``0x``, any case, padded,
    wrapped in blanks, in other scripts' digits, with extra digits."""
    digits = checksummed[2:]
    lower, upper = digits.lower(), digits.upper()
    case = draw(st.one_of(st.just(lower), st.just(upper), st.just(digits),
                          st.lists(st.booleans(), min_size=40, max_size=40).map(lambda f: _mixed_case(lower, f))))
    return draw(st.one_of(
        st.sampled_from(["", "0X", "0x", "x", "0x0", "0x00", "00x", "0x000000000000000000000000"]).map(
            lambda p: p + case),
        st.sampled_from(BLANKS).flatmap(lambda b: st.sampled_from([b + "0x" + case, "0x" + case + b])),
        st.just("0x" + _fullwidth(case)),
        st.sampled_from(DIGIT_ZEROS).map(lambda z: "0x" + _other_digits(case, z)),
        st.just("0x" + case),  # canonical-or-valid spellings: must still be denied
    ))


IPV4_LOOPBACK = (
    "127.1", "127.0.1", "0x7f.0.0.1", "0x7F.0x0.0x0.0x1", "0x7f000001", "0X7F000001", "2130706433", "017700000001",
    "0177.0.0.1", "0177.0000.0000.0001", "127.000.000.001", "127.0.0.1.", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]",
    "[0:0:0:0:0:ffff:7f00:1]", "[0000:0000:0000:0000:0000:ffff:127.0.0.1]", "\uff11\uff12\uff17.\uff10.\uff10.\uff11",
    "127\u30020\u30020\u30021", "127\uff0e0\uff0e0\uff0e1", "0x7f.1",
)


@st.composite
def hosts(draw: st.DrawFn, name: str) -> str:
    """Spellings of a DNS name: case, trailing dot, full-width forms, ideographic dots."""
    return draw(st.one_of(
        st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(
            lambda f: "".join(c.upper() if u else c for c, u in zip(name, f, strict=True))),
        st.just(name + "."), st.just(name.upper() + "."),
        st.just(_fullwidth(name)), st.just(name.replace(".", "\u3002")), st.just(name.replace(".", "\uff0e")),
        st.just(name.replace(".", "\uff61")),
    ))
