import pytest

from router.answers import extract_boxed, extract_final_answer, gsm8k_gold, normalize_number


@pytest.mark.parametrize("text,expected", [
    ("so \\boxed{72}.", "72"),
    ("\\boxed{\\frac{1}{2}} then \\boxed{1,000}", "1000"),
    ("The answer is 18 dollars", "18"),
    ("#### 1,234", "1234"),
    ("she has 3 apples and 4 pears, total 7", "7"),
    ("no digits here", ""),
    ("Answer: $18.50.", "18.5"),
])
def test_extract_final_answer(text, expected):
    assert extract_final_answer(text) == expected


def test_boxed_balances_braces_and_unterminated_is_none():
    assert extract_boxed("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert extract_boxed("\\boxed{12") is None


def test_gsm8k_gold_and_normalize():
    assert gsm8k_gold("work...\n#### 72") == "72"
    assert normalize_number("3.0") == "3" and normalize_number("abc") == "abc"
