"""benchmarks/suite.py end to end on a tiny digits case (real torch, seconds): every part runs,
--merge tabulates it, a second invocation skips what is stored, a changed case is refused."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from app.schemas import DatasetSpec, MLPSpec
from benchmarks import suite

# 2 epochs, read at 1 and 2 by the case that shares its runs: the mid-run readout is exercised.
TINY = suite.Case(
    "tiny-2ep",
    "64-16 tanh MLP, digits, B 64, 2 epochs",
    MLPSpec(hidden=[16]),
    DatasetSpec(name="digits"),
    64,
    2,
    learning_rates=(0.01, 0.1),
    momenta=(0.0, 0.9),
    seeds=1,
    default_seeds=1,
)
SHORT = dataclasses.replace(TINY, name="tiny-1ep", epochs=1, runs_from="tiny-2ep")
REGISTRY = {c.name: c for c in (TINY, SHORT)}


def _run(out: Path, *extra: str) -> int:
    return suite.main(["--cases", "tiny-2ep,tiny-1ep", "--out-dir", str(out), *extra], REGISTRY)


def test_suite_runs_merges_and_skips_stored_parts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "suite"
    assert _run(out) == 0
    files = sorted(out.rglob("*.json"))
    # grid and default once (shared), a recommendation per case.
    assert [f.relative_to(out).as_posix() for f in files] == [
        "tiny-1ep/recommend.json",
        "tiny-2ep/default.json",
        "tiny-2ep/grid.json",
        "tiny-2ep/recommend.json",
    ]
    grid = json.loads((out / "tiny-2ep/grid.json").read_text())
    assert grid["read_epochs"] == [1, 2] and len(grid["configs"]) == 4
    assert grid["provenance"]["git"]["revision"] and "torch" in grid["provenance"]
    for config in grid["configs"]:
        assert [r["epochs"] for r in config["reads"]] == [1, 2]
    best = max(r["test_accuracy"] for c in grid["configs"] for r in c["reads"])
    assert best > 0.5  # the mid-run readout reads trained weights, not chance

    stamps = {f: f.stat().st_mtime_ns for f in files}
    capsys.readouterr()
    assert _run(out) == 0
    second = capsys.readouterr().out
    # 3 parts × 2 cases, tiny-1ep's grid and default being tiny-2ep's files.
    assert second.count("skipped") == 6 and "running" not in second
    assert {f: f.stat().st_mtime_ns for f in files} == stamps

    merged = tmp_path / "suite.json"
    assert suite.main(["--merge", "--out-dir", str(out), "--merged", str(merged)], REGISTRY) == 0
    table = capsys.readouterr().out
    assert "tiny-1ep" in table and "targets (issue 12)" in table
    report = json.loads(merged.read_text())
    landed = []
    for row in report["cases"]:
        assert row["missing"] == []
        assert {"best_test_accuracy", "best_config"} <= row["grid"].keys()
        assert {"test_accuracy_mean", "test_accuracy_std"} <= row["default"].keys()
        rec = row["recommend"]
        assert {"probe_cost_full_runs", "probe_wall_s", "validity_ok"} <= rec.keys()
        if not row["refused"]:
            assert {"regret_vs_grid_points", "gain_vs_default_points"} <= row.keys()
            assert rec["one_run_wall_s"] > 0 and rec["seeds"] == 1
            # Where the runs' order parameter ended against the prediction, from the stored runs
            # (an answer without a growth law predicts no end: nothing to compare).
            stored = json.loads((out / row["case"] / "recommend.json").read_text())
            predicted = stored["engine"]["recommendation"]["edge"]["predicted_final"]
            landing = rec["edge_landing"]
            assert (landing is None) == (predicted is None)
            if landing:
                end = stored["training"]["runs"][0]["J_max"] ** 2
                assert landing["measured_final"] == pytest.approx(end)
                assert landing["relative_error"] == pytest.approx(end / predicted - 1)
                assert f"J² at the end {end:.3f}" in table
                landed.append(row["case"])
    assert landed  # tiny-2ep's answer has a growth law
    assert all(t["verdict"] in ("met", "not met", "missing") for t in report["targets"])


def test_a_part_stored_from_other_inputs_is_refused_unless_recomputed(tmp_path: Path) -> None:
    out = tmp_path / "suite"
    assert _run(out, "--parts", "default") == 0
    changed = {"tiny-2ep": dataclasses.replace(TINY, default_seeds=2)}
    args = ["--cases", "tiny-2ep", "--parts", "default", "--out-dir", str(out)]
    with pytest.raises(SystemExit, match="other inputs"):
        suite.main(args, changed)
    assert suite.main([*args, "--recompute"], changed) == 0
    default = json.loads((out / "tiny-2ep/default.json").read_text())
    assert [s["seed"] for s in default["seeds"]] == [0, 1]
