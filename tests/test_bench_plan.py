"""kedit bench: plans (scenarios, plan files, shards) and the SQLite store (units written once,
another bench refused, a failed write leaving nothing)."""

from __future__ import annotations

import pytest
import yaml

from kedit.bench import BenchPlan, BenchStore
from kedit.bench.store import UnitResult
from kedit.eval.protocol_text import parse_protocol, parse_protocols
from kedit.eval.protocols import Batch, Sequential, Single
from kedit.eval.rows import CaseRow, MeasureRow, Unit

# -- plans ------------------------------------------------------------------------------------


def test_scenarios_parse_from_the_command_line_form():
    text = "single,batch:10,sequential:1,10,20,40,sequential:100,200;batch=100"
    assert [str(s) for s in parse_protocols(text)] == [
        "single",
        "batch:10",
        "sequential:1,10,20,40",
        "sequential:100,200;batch=100",
    ]
    assert parse_protocol("sequential:20,1,10").checkpoints == (1, 10, 20)
    assert parse_protocol("sequential:5;scoring=immediate") == Sequential((5,), 1, "immediate")
    assert parse_protocols("single,batch:3") == [Single(), Batch(3)]
    for bad in (
        "double",
        "batch",
        "batch:2,3",
        "sequential",
        "single:3",
        "batch:0",
        "batch:x",
        "sequential:1,3;batch=2",  # a checkpoint inside a batch
        "sequential:1,3;scoring=immediate",  # immediate scoring has no checkpoints
        "sequential:3;colour=red",
        "general",  # the unedited baseline is the bench's own job, not a scenario
    ):
        with pytest.raises(ValueError):
            parse_protocol(bad)


def test_a_plan_fails_on_every_problem_before_loading_anything():
    with pytest.raises(ValueError) as err:
        BenchPlan(
            methods=["rome", "no-such-method"],
            scenarios=["single", "sequential:1,10,40"],
            limit=20,
            general=["wikitext", "no-task"],
            overrides={"memit": {"layers": [1]}},
        )
    message = str(err.value)
    for part in ("no-such-method", "edits 40 cases but --limit is 20", "no-task", "memit"):
        assert part in message
    with pytest.raises(ValueError, match="did you mean 'layer'"):
        BenchPlan(methods=["rome"], scenarios=["single"], overrides={"rome": {"layerr": 3}})
    assert BenchPlan(methods=["ft"], scenarios=["single"]).methods == ["ft-l"]  # alias


def test_a_plan_file_reads_like_the_options(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "methods": "rome,memit",
                "scenarios": ["single", "sequential:1,10"],
                "limit": 10,
                "overrides": {"rome": {"layer": 3}},
            }
        )
    )
    plan = BenchPlan.from_yaml(path)
    assert plan.methods == ["rome", "memit"]
    assert [str(s) for s in plan.scenarios] == ["single", "sequential:1,10"]
    assert BenchPlan.from_dict(plan.to_dict()) == plan
    path.write_text(yaml.safe_dump({"methods": ["rome"], "scenarios": ["single"], "lmit": 3}))
    with pytest.raises(ValueError, match="unknown plan key"):
        BenchPlan.from_yaml(path)
    # how shards are cut is no part of the identity a resumed bench must match
    from kedit.cli import build_parser
    from kedit.cli_bench import plan_from_args

    parser = build_parser()
    args = ["bench", "--plan", str(tmp_path / "p.yaml"), "--out", str(tmp_path / "b")]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"methods": "ike", "scenarios": "single"}))
    assert not plan_from_args(parser.parse_args(args)).split_checkpoints
    split = plan_from_args(parser.parse_args([*args, "--split-checkpoints"]))
    assert (
        split.split_checkpoints
        and split.identity() == plan_from_args(parser.parse_args(args)).identity()
    )


def test_shards_are_fixed_by_position_and_skip_finished_units():
    ids = [f"c{i}" for i in range(20)]
    plan = BenchPlan(methods=["memit"], scenarios=["single", "batch:3", "sequential:1,10"])
    single, batch, sequential = (job.protocol for job in plan.jobs())
    shards = single.shards(ids, {"c0", "c1"})
    assert [len(s.case_ids) for s in shards] == [16, 4]  # c0, c1 still pre-scored with c2..c15
    assert "c0" not in shards[0].units and len(shards[0].units) == 14
    assert single.shards(ids, set(ids[:16]))[0].case_ids == tuple(ids[16:])
    assert batch.units(ids) == {f"batch@c{i}" for i in range(0, 20, 3)}
    assert [len(s.case_ids) for s in batch.shards(ids, set())] == [15, 5]
    (seq,) = sequential.shards(ids, {"checkpoint@1"})
    assert seq.case_ids == tuple(ids[:10]) and seq.units == {"checkpoint@10"}
    assert sequential.shards(ids, {"checkpoint@1", "checkpoint@10"}) == []
    immediate = Sequential((4,), 2, "immediate")
    assert immediate.units(ids) == {"edit@2", "edit@4"}
    # split: a shard per checkpoint, each with the whole sequence's cases (its unedited pass)
    split = sequential.shards(ids, set(), split=True)
    assert [(s.case_ids, s.units) for s in split] == [
        (tuple(ids[:10]), {"checkpoint@1"}),
        (tuple(ids[:10]), {"checkpoint@10"}),
    ]
    assert sequential.shards(ids, {"checkpoint@1"}, split=True) == [split[1]]
    assert immediate.shards(ids, set(), split=True) == immediate.shards(ids, set())
    assert single.shards(ids, set(), split=True) == single.shards(ids, set())


# -- the store ----------------------------------------------------------------------------------


def test_a_unit_is_written_once_and_a_different_bench_is_refused(tmp_path):
    unit = UnitResult(
        "rome/single",
        Unit(
            "c1",
            [CaseRow("c1", 1, edit_time_s=1.0, details={"x": 1})],
            [MeasureRow("c1", 1, "efficacy_score", "reliability", "prob", True, 0.0, 1.0)],
        ),
    )
    with BenchStore(tmp_path) as store:
        store.check_identity({"model": "m", "seed": 0})
        assert store.open_job("rome/single", "rome", "single", {"config": {"layer": 1}}) == set()
        assert store.write_unit(unit) is True
        assert store.write_unit(unit) is False  # a unit already stored is left alone
        assert store.open_job("rome/single", "rome", "single", {"config": {"layer": 1}}) == {"c1"}
        with pytest.raises(ValueError, match="different config"):
            store.open_job("rome/single", "rome", "single", {"config": {"layer": 2}})
        with pytest.raises(ValueError, match="differs in seed"):
            store.check_identity({"model": "m", "seed": 1})
        assert (store.count("units"), store.count("cases"), store.count("results")) == (1, 1, 1)
        (case,) = store.cases()
        assert case["details"] == {"x": 1} and case["method"] == "rome"
    with pytest.raises(FileNotFoundError, match="bench folder"):
        BenchStore(tmp_path / "nothing", create=False)


def test_a_failing_unit_write_leaves_nothing_behind(tmp_path):
    broken = MeasureRow("c1", 1, "m", "g", "p", None, 0.0, 1.0)  # no direction: cannot be stored
    bad = UnitResult("j/single", Unit("c1", [CaseRow("c1", 1)], [broken]))
    with BenchStore(tmp_path) as store:
        store.open_job("j/single", "j", "single", {})
        with pytest.raises(TypeError):
            store.write_unit(bad)
        assert store.count("cases") == 0 and store.count("units") == 0
