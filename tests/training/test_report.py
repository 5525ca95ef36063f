"""The evaluation report on synthetic curves whose numbers are known by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bestroute_lc.pricing import Prices
from training.evaluation.outcomes import (
    EvalPrompt,
    EvalSet,
    MemberOutcomes,
    OperatingPoint,
)
from training.evaluation.report import (
    Report,
    aggregate,
    aggregate_tables,
    cheapest_single_option,
    cost_estimation_error,
    max_reduction_at_drop,
    nearest_point,
    single_options,
)
from training.evaluation.sweep import Baseline, drop_at_cost_reduction

BASE = Baseline(cost=1e-3, quality=1.0)  # $1 per 1,000 calls
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def line_curve(slope: float = 0.2, cheapest: float = 0.5) -> list[OperatingPoint]:
    """Quality falls linearly with the saving: q = 1 - slope x reduction, from reduction 0 to
    1 - cheapest; the cheap share grows with the saving (it is what routing shifts)."""
    points = []
    for c in np.linspace(cheapest, 1.0, 6):
        reduction = 1.0 - c
        share = reduction / (1.0 - cheapest)
        distribution = {"ref:1": 1.0 - share, "cheap:1": share / 2, "cheap:3": share / 2}
        points.append(
            OperatingPoint(float(c) * 1e-3, 1.0 - slope * reduction, {k: v for k, v in distribution.items() if v > 0}, knob=float(c))
        )
    return points


def make_report(**kwargs) -> Report:
    curves = {
        "BEST-Route (proxy)": line_curve(0.2),
        "BEST-Route (oracle)": line_curve(0.05, cheapest=0.3),
        "N-class": [OperatingPoint(0.9993e-3, 1.0, {"ref:1": 0.9993, "cheap:1": 0.0007})],
    }
    kwargs.setdefault("weakest", OperatingPoint(0.5e-3, 0.9, {"cheap:1": 1.0}))
    return Report("synthetic", BASE, curves, reference="ref", members=["cheap", "ref"], **kwargs)


def test_table1_on_a_straight_line_is_computable_by_hand() -> None:
    report = make_report()
    table = report.table1()
    proxy = table["BEST-Route (proxy)"]
    # q = 1 - 0.2 r: 10 % -> 2 %, 20 % -> 4 %, 40 % -> 8 %; 60 % is cheaper than the cheapest point
    assert proxy["10"] == pytest.approx(2.0) and proxy["20"] == pytest.approx(4.0) and proxy["40"] == pytest.approx(8.0)
    assert math.isnan(proxy["60"])
    assert table["BEST-Route (oracle)"]["60"] == pytest.approx(3.0)
    assert all(math.isnan(v) for v in table["N-class"].values())
    md = report.to_markdown()
    assert "| Cost reduction (%) | BEST-Route (proxy) | BEST-Route (oracle) | N-class |" in md
    assert "| 40 | 8.00 | 2.00 | n/a |" in md
    assert "| 60 | n/a | 3.00 | n/a |" in md
    # the paper's footnote for methods that never save that much
    assert "- N-class: at most 0.07 % cost reduction, with 0.00 % quality drop." in md
    assert "- BEST-Route (proxy): at most 50.00 % cost reduction, with 10.00 % quality drop." in md
    assert "$1.0000 per 1,000 calls" in md


def test_summary_metrics() -> None:
    summary = make_report().summary()
    proxy = summary["BEST-Route (proxy)"]
    # the proxy curve runs straight from the weakest point (0.5, 0.9) to the reference (1, 1)
    assert proxy["apgr"] == pytest.approx(0.5, abs=1e-6)
    assert proxy["aiq"] == pytest.approx(0.95, abs=1e-6)
    # <= 1 % drop: 1 - 0.2 r >= 0.99 -> r <= 5 %
    assert proxy["max_cost_reduction_pct"] == pytest.approx(5.0)
    assert summary["BEST-Route (oracle)"]["max_cost_reduction_pct"] == pytest.approx(20.0)
    assert summary["N-class"]["max_cost_reduction_pct"] == pytest.approx(0.07)
    assert (proxy["points"], proxy["pareto_points"]) == (6, 6)
    # N-class starts near the reference's cost: sweep's areas count quality 0 below it, flagged
    assert summary["N-class"]["covers_cost_range"] is False and proxy["covers_cost_range"] is True
    assert "| N-class | -8.9875 † | 0.0012 † | 0.07 | 1 (1) |" in make_report().to_markdown()
    assert math.isnan(make_report(weakest=None).summary()["N-class"]["apgr"])
    assert "| N-class | n/a | n/a | 0.07 | 1 (1) |" in make_report(weakest=None).to_markdown()


def test_max_reduction_is_where_the_interpolated_drop_reaches_the_limit() -> None:
    rng = np.random.default_rng(0)
    costs = np.sort(rng.uniform(0.2e-3, 1.1e-3, 30))
    points = [OperatingPoint(float(c), float(0.7 + 0.3 * np.sqrt(c / 1.1e-3) + rng.normal(0, 0.005)), {}) for c in costs]
    for limit in (0.5, 1.0, 3.0):
        r = max_reduction_at_drop(points, BASE, limit)
        assert drop_at_cost_reduction(points, BASE, r) == pytest.approx(limit, abs=1e-9)
        assert drop_at_cost_reduction(points, BASE, r + 1e-3) > limit
    # one point at half the cost and half the quality: mixing it with always-reference at random
    # saves 1 % of the cost for 1 % of quality (the hull includes the reference)
    assert max_reduction_at_drop([OperatingPoint(0.5e-3, 0.5, {})], BASE, 1.0) == pytest.approx(0.01)


def test_routing_distribution_at_the_nearest_points() -> None:
    report = make_report(routing_method="BEST-Route (proxy)")
    rows = report.routing()
    assert [r["target_pct"] for r in rows] == pytest.approx([10, 20, 40, 60])
    # points every 10 % of saving up to 50 %: 60 % falls back to the cheapest (50 %)
    assert [r["cost_reduction_pct"] for r in rows] == pytest.approx([10, 20, 40, 50])
    assert rows[2]["distribution"] == pytest.approx({"ref:1": 0.2, "cheap:1": 0.4, "cheap:3": 0.4})
    assert report.routing_labels() == ["cheap:1", "cheap:3", "ref:1"]
    md = report.to_markdown()
    assert "| Target reduction (%) | Actual reduction (%) | Quality drop (%) | Knob | cheap n=1 | cheap n=3 | ref n=1 |" in md
    assert "| 40 | 40.00 | 8.00 | 0.60 | 40.0 | 40.0 | 20.0 |" in md
    assert nearest_point(report.curves["N-class"], BASE, 0.4).cost == pytest.approx(0.9993e-3)
    with pytest.raises(ValueError, match="routing_method"):
        make_report(routing_method="nope")


def test_json_is_reproducible_and_complete(tmp_path) -> None:
    first, second = make_report(split={"seed": 3, "test": 0.2}), make_report(split={"seed": 3, "test": 0.2})
    assert first.json_text() == second.json_text()
    data = json.loads(first.json_text())
    assert data["table1"]["BEST-Route (proxy)"] == {"10": 2.0, "20": 4.0, "40": 8.0, "60": None}
    assert data["summary"]["BEST-Route (proxy)"]["max_cost_reduction_pct"] == 5.0
    assert len(data["curves"]["BEST-Route (proxy)"]) == 6 and data["curves"]["N-class"][0]["pareto"] is True
    assert data["baseline"] == {"cost": 0.001, "cost_per_1000": 1.0, "quality": 1.0}
    assert data["split"] == {"seed": 3, "test": 0.2} and data["reach"]["N-class"]["cost_reduction_pct"] == pytest.approx(0.07)
    # floats are rounded: 1 - 0.9993 is not 0.0007 in binary, but the JSON says 0.07
    assert data["reach"]["N-class"]["cost_reduction_pct"] == 0.07
    paths = first.save(tmp_path / "a", plots=False)
    assert set(paths) == {"markdown", "json"}
    assert paths["json"].read_text() == second.json_text()


def test_save_writes_markdown_json_and_valid_pngs(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.image

    paths = make_report(cost_errors={"cheap": 1e-5, "ref": 2.7e-3}, notes=["synthetic curves"]).save(tmp_path)
    assert {k: p.name for k, p in paths.items()} == {
        "markdown": "report.md", "json": "report.json", "curves": "curves.png", "routing": "routing.png",
    }
    for key in ("curves", "routing"):
        data = paths[key].read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 10_000
        height, width = matplotlib.image.imread(paths[key]).shape[:2]
        assert width > 500 and height > 400
    md = paths["markdown"].read_text()
    assert "![cost-quality curves](curves.png)" in md and "- synthetic curves" in md
    assert "| ref | 0.002700 | $2.7000 |" in md and "| cheap | 0.000010 | $0.0100 |" in md
    json.loads(paths["json"].read_text())


def test_aggregate_mean_and_std() -> None:
    reports = [
        Report("he", BASE, {"BEST-Route": line_curve(s, cheapest=c), "N-class": [OperatingPoint(0.9993e-3, 1.0, {"ref:1": 1.0})]})
        for s, c in ((0.2, 0.3), (0.4, 0.3), (0.6, 0.5))
    ]
    agg = aggregate(reports)
    cell = agg["table1"]["BEST-Route"]["10"]  # drops 2, 4, 6
    assert (cell["mean"], cell["std"], cell["count"]) == (pytest.approx(4.0), pytest.approx(2.0), 3)
    assert agg["table1"]["BEST-Route"]["60"]["count"] == 2  # the third never saves 60 %
    assert agg["table1"]["BEST-Route"]["60"]["mean"] == pytest.approx(18.0)  # 12 and 24
    md = aggregate_tables(reports)
    assert "mean ± std over 3 runs" in md
    assert "| 10 | 4.00 ± 2.00 | n/a |" in md
    assert "| 60 | 18.00 ± 8.49 (2/3) | n/a |" in md
    assert "| BEST-Route | n/a | n/a | 3.06 ± 1.73 | 6.0 ± 0.0 |" in md  # 5, 2.5, 1.67 %
    with pytest.raises(ValueError, match="same methods"):
        aggregate([reports[0], make_report()])


def eval_set() -> EvalSet:
    prices = {"ref": Prices(input_per_mtok=5, output_per_mtok=15), "cheap": Prices(input_per_mtok=0.1, output_per_mtok=0.2)}
    prompts = []
    for i in range(4):
        tokens = 100.0 + 20 * i  # mean output tokens 100, 120, 140, 160
        prompts.append(
            EvalPrompt(
                f"q{i}", "text", "s",
                {
                    "ref": MemberOutcomes(np.ones(3), np.full(3, tokens), 50, np.zeros(3)),
                    "cheap": MemberOutcomes(np.array([1.0, 0.0, 0.0]), np.array([tokens - 10, tokens, tokens + 10]), 50, np.array([1.0, 0, 0])),
                },
            )
        )
    return EvalSet(prompts, ["ref", "cheap"], "ref", prices, {"ref": False, "cheap": False}, max_n=3, name="tiny")


def test_cost_estimation_error_and_report_from_eval_set() -> None:
    data = eval_set()
    errors = cost_estimation_error(data, {"ref": 130.0, "cheap": 130.0})
    # |130 - t| over t = 100..160 step 20: 30, 10, 10, 30 -> mean 20 tokens
    assert errors["ref"] == pytest.approx(20 * 15 / 1e6) and errors["cheap"] == pytest.approx(20 * 0.2 / 1e6)
    assert cost_estimation_error(data, data.average_output_tokens())["ref"] == pytest.approx(20 * 15 / 1e6)
    options = single_options(data, "proxy", ns=(1, 2, 3))
    assert set(options) == {"ref:1", "ref:2", "ref:3", "cheap:1", "cheap:2", "cheap:3"}
    assert options["cheap:3"].quality == pytest.approx(1.0)
    weakest = cheapest_single_option(data)
    assert weakest.distribution == {"cheap:1": 1.0} and weakest.quality == pytest.approx(1 / 3)
    report = Report.from_eval_set(
        data, {"best-of-n": list(options.values())}, avg_output_tokens={"ref": 130.0, "cheap": 130.0}
    )
    assert report.dataset == "tiny" and report.reference == "ref" and report.cost_errors == errors
    assert report.baseline == Baseline.of(data)
    # cheap:3 matches the reference at a fraction of its cost: no drop at any saving listed
    assert all(v == pytest.approx(0.0, abs=1e-9) for v in report.table1()["best-of-n"].values())
    assert "## Cost estimation error (App. B.1, Table 7)" in report.to_markdown()



def test_report_round_trips_through_json() -> None:
    report = make_report()
    rebuilt = Report.from_json(json.loads(report.json_text()))
    assert rebuilt.json_text() == report.json_text()
    assert rebuilt.to_markdown() == report.to_markdown()
