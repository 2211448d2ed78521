"""A deliberately broken plugin distribution is isolated and reported, never crashing attviz.

The fixture writes fake distributions (``*.dist-info`` with METADATA and entry_points.txt) into a
temporary directory on ``sys.path``, so ``importlib.metadata`` discovers them like installed ones.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from attviz import cli, registry
from attviz.registry import PluginWarning

BROKEN = """\
[attviz.aggregations]
broken_missing = broken_attviz_plugin_nowhere:Aggregation
broken_not_aggregation = collections:OrderedDict
twin = attviz.aggregations.reductions:Mean

[attviz.views]
broken_view = attviz.views.base:View
"""
TWIN = """\
[attviz.aggregations]
twin = attviz.aggregations.reductions:Max
"""


def write_distribution(root: Path, name: str, entry_points: str) -> None:
    info = root / f"{name}-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(entry_points)


@pytest.fixture
def broken_plugins(tmp_path):
    """Two fake distributions on sys.path: broken-attviz-plugin and twin-attviz-plugin."""
    write_distribution(tmp_path, "broken_attviz_plugin", BROKEN)
    write_distribution(tmp_path, "twin_attviz_plugin", TWIN)
    sys.path.append(str(tmp_path))
    importlib.invalidate_caches()
    registry.refresh()
    yield tmp_path
    sys.path.remove(str(tmp_path))
    importlib.invalidate_caches()
    registry.refresh()


def test_broken_plugins_are_isolated_and_reported(broken_plugins):
    with pytest.warns(PluginWarning) as caught:
        infos = registry.plugin_infos()
    messages = " ".join(str(w.message) for w in caught)
    assert "broken_missing" in messages and "broken_not_aggregation" in messages and "broken_view" in messages

    problems = {info.name: info for info in registry.problems()}
    missing, not_aggregation = problems["broken_missing"], problems["broken_not_aggregation"]
    assert (missing.status, missing.distribution) == ("error", "broken-attviz-plugin")
    assert "ModuleNotFoundError" in missing.error and "broken_attviz_plugin_nowhere" in missing.error
    assert not_aggregation.status == "error" and "not a subclass of attviz.aggregations.Aggregation" in (
        not_aggregation.error
    )
    assert problems["broken_view"].status == "error" and "does not implement __panel__" in problems["broken_view"].error

    # the built-ins still work, the broken ones are left out
    working = registry.plugins("aggregations")
    assert {"mean", "rollout", "attention_received"} <= set(working)
    assert not {"broken_missing", "broken_not_aggregation"} & set(working)
    assert "broken_view" not in registry.plugins("views")
    with pytest.raises(KeyError, match="unavailable: ModuleNotFoundError"):
        registry.get("aggregations", "broken_missing")
    assert len(infos) == len(registry.plugin_infos())


def test_a_name_claimed_twice_is_a_duplicate(broken_plugins):
    with pytest.warns(PluginWarning) as caught:
        twins = [info for info in registry.plugin_infos("aggregations") if info.name == "twin"]
    assert any("twin left out: name 'twin' is already taken" in str(w.message) for w in caught)
    assert sorted(info.status for info in twins) == ["duplicate", "ok"]  # the first one found wins
    duplicate = next(info for info in twins if info.status == "duplicate")
    assert "already taken by" in duplicate.error
    assert {info.distribution for info in twins} == {"broken-attviz-plugin", "twin-attviz-plugin"}
    assert registry.plugins("aggregations")["twin"].__name__ in ("Mean", "Max")


def test_cli_lists_broken_plugins_with_their_errors(broken_plugins, capsys):
    with pytest.warns(PluginWarning):
        assert cli.main(["plugins", "--json"]) == 0
    listed = {(p["group"], p["name"]): p for p in json.loads(capsys.readouterr().out)}
    missing = listed[("attviz.aggregations", "broken_missing")]
    assert missing["status"] == "error" and "ModuleNotFoundError" in missing["error"]
    assert missing["distribution"] == "broken-attviz-plugin"
    assert listed[("attviz.aggregations", "broken_not_aggregation")]["status"] == "error"
    assert listed[("attviz.views", "broken_view")]["status"] == "error"
    assert listed[("attviz.aggregations", "mean")]["status"] == "ok"


def test_refresh_forgets_the_broken_plugins_once_removed(broken_plugins):
    with pytest.warns(PluginWarning):
        assert registry.problems()
    sys.path.remove(str(broken_plugins))
    registry.refresh()
    assert not [p for p in registry.problems() if "attviz-plugin" in p.distribution]
    sys.path.append(str(broken_plugins))  # the fixture removes it again
