"""The README's corpus-statistics recipe, executed as written (the bundled MiniLM demo corpus, offline)."""

from __future__ import annotations

from pathlib import Path

import pytest
from scipy import stats as scipy_stats


@pytest.mark.slow
def test_the_readme_stats_recipe_runs_as_written():
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- stats-recipe -->", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(compile(block, "README.md (stats recipe)", "exec"), scope)
    stats, atlas, table = scope["stats"], scope["atlas"], scope["table"]
    assert len(atlas) == 6 * 12 and atlas["pattern"].notna().all()
    assert (table.attrs["a"], table.attrs["b"]) == ("sports", "rest")
    # the first row's p-value again, from the per-document values, by scipy
    top = table.iloc[0]
    values = stats.token_values(int(top["layer"]), int(top["head"]))
    values = values[values["type"] == top["type"]]
    labels = stats.documents.set_index("id")["label"]
    sports = values[labels.loc[values["id"]].to_numpy() == "sports"]["value"]
    rest = values[labels.loc[values["id"]].to_numpy() != "sports"]["value"]
    expected = scipy_stats.mannwhitneyu(sports, rest, method="asymptotic")
    assert top["p_mannwhitney"] == pytest.approx(expected.pvalue, rel=1e-6)
