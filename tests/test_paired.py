"""Paired comparisons in `dihs eval`: the difference is the accuracy difference, its interval
holds it, and the test only listens to the inputs the two policies answer differently."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dihs_model.paired import compare

pairs = st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=300)


@given(pairs)
def test_difference_is_the_accuracy_difference_inside_its_interval(rows):
    a, b = [x for x, _ in rows], [y for _, y in rows]
    c = compare(a, b)
    assert c["accuracy_diff"] == pytest.approx(sum(a) / len(a) - sum(b) / len(b))
    assert c["ci95"][0] <= c["accuracy_diff"] <= c["ci95"][1]
    assert 0.0 <= c["p_value"] <= 1.0
    swapped = compare(b, a)
    assert (swapped["wins"], swapped["losses"]) == (c["losses"], c["wins"])
    assert swapped["p_value"] == pytest.approx(c["p_value"])


@given(pairs, st.integers(min_value=1, max_value=500))
def test_inputs_both_answer_alike_do_not_move_the_test(rows, extra):
    a, b = [x for x, _ in rows], [y for _, y in rows]
    more = compare(a + [True] * extra, b + [True] * extra)
    assert more["p_value"] == pytest.approx(compare(a, b)["p_value"])


def test_one_input_in_thousands_is_noise_and_a_hundred_is_not():
    n = 2000
    one = compare([True] * n, [True] * (n - 1) + [False])
    assert one["p_value"] == 1.0 and one["ci95"][0] < 0 < one["ci95"][1]
    many = compare([True] * n, [True] * (n - 100) + [False] * 100)
    assert many["p_value"] < 1e-20 and many["ci95"][0] > 0


def test_identical_answers_differ_by_nothing():
    c = compare([True, False, True], [True, False, True])
    assert c == {"accuracy_diff": 0.0, "ci95": [0.0, 0.0], "wins": 0, "losses": 0, "p_value": 1.0}


@pytest.mark.parametrize("a, b", [([], []), ([True], [True, False])])
def test_unpaired_input_is_refused(a, b):
    with pytest.raises(ValueError, match="equally long"):
        compare(a, b)
