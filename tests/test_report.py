"""The README's results section is what `python -m benchmarks.report` renders from the committed JSON."""

from benchmarks import report


def test_readme_results_section_is_regenerated_from_the_committed_json():
    rendered = report.render()
    assert "not measured yet" not in rendered.split("gru_step_cuda.json")[0]
    assert "**GPU checks**" in rendered and "Pipeline worker on CPU and on CUDA" in rendered
    assert rendered in (report.ROOT / "README.md").read_text(), \
        "README.md is stale: run `python -m benchmarks.report`"
