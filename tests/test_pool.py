"""`dihs pool`: comparisons added over test sets equal one comparison on all their inputs."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dihs_cli.cli import main
from dihs_model.paired import compare
from dihs_model.pool import PoolError, pool_evals

answers = st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()), min_size=1, max_size=200)


def eval_result(rows, targets=(0.5, 0.25)):
    """A `dihs eval` result whose dihs rows compare (dihs, static-heads, dense) correctness lists."""
    dihs, michel, dense = ([r[i] for r in rows] for i in range(3))
    out = [{"policy": "dense", "target_flops_ratio": 1.0}]
    for t in targets:
        out.append(
            {
                "policy": "dihs",
                "target_flops_ratio": t,
                "vs_dense": compare(dihs, dense),
                "vs_static": {"static-heads": compare(dihs, michel)},
            }
        )
    return {"task": "t", "n": len(rows), "rows": out}


@given(answers, answers)
def test_pooling_two_sets_is_comparing_on_all_their_inputs(a, b):
    pooled = pool_evals([eval_result(a), eval_result(b)], ["a", "b"])
    both = a + b
    assert pooled["n"] == len(both)
    for row in pooled["rows"]:
        i = {"dense": 2, "static-heads": 1}[row["against"]]
        whole = compare([r[0] for r in both], [r[i] for r in both])
        assert (row["wins"], row["losses"]) == (whole["wins"], whole["losses"])
        assert row["accuracy_diff"] == pytest.approx(whole["accuracy_diff"])
        assert row["p_value"] == pytest.approx(whole["p_value"])
        assert [s["set"] for s in row["per_set"]] == ["a", "b"]


def test_only_what_every_set_has_is_pooled_largest_target_first():
    rows = [(True, False, True), (False, True, True), (True, True, False)]
    pooled = pool_evals([eval_result(rows, (0.5, 0.3, 0.25)), eval_result(rows, (0.25, 0.5))], ["a", "b"])
    assert [(r["target_flops_ratio"], r["against"]) for r in pooled["rows"]] == [
        (0.5, "dense"),
        (0.5, "static-heads"),
        (0.25, "dense"),
        (0.25, "static-heads"),
    ]


@pytest.mark.parametrize(
    "results, message",
    [
        ([{"n": 3, "rows": []}], "at least two"),
        ([{"rows": []}, {"n": 3, "rows": []}], "not a `dihs eval` result"),
        ([{"n": 3, "rows": [{"policy": "dense", "target_flops_ratio": 1.0}]}] * 2, "--policies dense dihs"),
        ([{"n": 3, "rows": [{"policy": "dihs", "vs_dense": {"wins": 1}}]}] * 2, "without target or counts"),
    ],
)
def test_what_cannot_be_pooled_says_why(results, message):
    with pytest.raises(PoolError, match=message):
        pool_evals(results, ["a", "b"][: len(results)])


def test_cli_writes_the_pooled_json_and_bad_input_is_one_line_exit_2(tmp_path, capsys):
    rows = [(True, False, True), (False, False, True), (True, True, True)]
    paths = []
    for name in ("movies", "tweets"):
        paths.append(tmp_path / f"eval-{name}.json")
        paths[-1].write_text(json.dumps(eval_result(rows)))
    out = tmp_path / "pooled.json"
    assert main(["pool", *map(str, paths), "--json", str(out)]) == 0
    pooled = json.loads(out.read_text())
    assert [s["set"] for s in pooled["sets"]] == ["eval-movies", "eval-tweets"]
    first = pooled["rows"][0]  # dihs at 0.5 against dense: one loss per set
    assert (first["target_flops_ratio"], first["against"], first["wins"], first["losses"]) == (
        0.5,
        "dense",
        0,
        2,
    )
    assert capsys.readouterr().out.startswith("2 test sets, 6 inputs")

    (tmp_path / "broken.json").write_text("{not json")
    bad = tmp_path / "bad.json"
    assert main(["pool", str(paths[0]), str(tmp_path / "broken.json"), "--json", str(bad)]) == 2
    assert main(["pool", str(paths[0]), str(tmp_path / "missing.json"), "--json", str(bad)]) == 2
    assert main(["pool", str(paths[0]), str(paths[0]), "--json", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("dihs: error: cannot read") for line in err[:2])
    assert "given twice" in err[2]
    assert not bad.exists()
