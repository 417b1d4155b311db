"""The one percentage formatter."""

from pitguard.core.fmt import MISSING, pct, pct_ci


def test_shares_print_as_percentages_with_fixed_or_all_digits():
    assert pct(0.91234) == "91.23%"
    assert pct(0.005, digits=-1) == "0.5%"
    assert pct(0.5, 1, sign="") == "50.0"
    assert pct(0.9, width=8) == "  90.00%"


def test_a_missing_value_is_spelled_one_way():
    assert pct(None) == MISSING
    assert pct(None, width=5) == "  n/a"
    assert pct_ci(None) == pct_ci([None, 0.2]) == ""


def test_interval():
    assert pct_ci([0.895, 0.9384]) == " [89.50, 93.84]"
