"""A bad catalog is a DAG import error that says where and how to fix it; a quoted name just works.

Airflow parses ``dags/`` with ``MV_REFRESH_CONFIG`` pointing at each catalog: the import error of
``dags/ops_mv_refresh.py`` must carry the loader's message (file, line, entry, problem, fix), and
``mv-refresh plan`` must print the same message and exit 2.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mv_refresh.catalog import CatalogError, load_catalog
from mv_refresh.cli import main

pytestmark = pytest.mark.airflow

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
REFRESH_DAG_FILE = str(DAGS_DIR / "ops_mv_refresh.py")

# Each bad catalog, with the line at fault and what the error must say about it.
BAD_CATALOGS = {
    "missing_name": (
        "version: 1\n"
        "views:\n"
        "  - name: ops.mv_a\n"
        "  - description: the second view, without a name\n"  # line 4
        "    critical: true\n",
        4,
        ["views[1]", "the view has no name", "Fix: add `name: schema.view` to this entry"],
    ),
    "cycle": (
        "version: 1\n"
        "views:\n"
        "  - name: ops.mv_a\n"
        "    upstream: [ops.mv_b]\n"  # line 4
        "  - name: ops.mv_b\n"
        "    upstream: [ops.mv_a]\n",  # line 6
        4,
        ["views[0].upstream (ops.mv_a)", "dependency cycle: ops.mv_a -> ops.mv_b -> ops.mv_a",
         "Fix: remove one of these upstream entries", "line 6"],
    ),
    "unknown_key": (
        "version: 1\n"
        "views:\n"
        "  - name: ops.mv_a\n"
        "    depends_on: [ops.mv_b]\n",  # line 4
        4,
        ["views[0] (ops.mv_a)", "unknown key 'depends_on'", "Fix: did you mean 'upstream'?"],
    ),
    "malformed_name": (
        "version: 1\n"
        "views:\n"
        "  - name: ops.mv_a\n"
        "  - name: ops.a; drop table x\n",  # line 4
        4,
        ["views[1].name", "invalid view name 'ops.a; drop table x'", "'; drop table x'", "Fix: ",
         'double-quote a part that really contains such characters'],
    ),
}

QUOTED_CATALOG = """\
version: 1
views:
  - name: ops.mv_a
    grain: [id]
  - name: 'ops."Weird MV"'
    description: A view whose name needs quotes.
    critical: true
    grain: ['"Key Col"']
    upstream: [ops.mv_a]
"""


def _dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_DIR))


@pytest.fixture
def catalog_file(tmp_path, monkeypatch):
    def write(text: str) -> Path:
        path = tmp_path / "catalog.yaml"
        path.write_text(text)
        monkeypatch.setenv("MV_REFRESH_CONFIG", str(path))
        return path

    return write


@pytest.mark.parametrize("case", sorted(BAD_CATALOGS))
def test_a_bad_catalog_is_an_import_error_that_names_the_entry_and_the_fix(case, catalog_file, capsys):
    text, line, phrases = BAD_CATALOGS[case]
    path = catalog_file(text)
    with pytest.raises(CatalogError) as info:
        load_catalog()
    message = str(info.value)
    assert info.value.line == line and info.value.fix
    assert message.startswith(f"{path}, line {line}: ")
    for phrase in phrases:
        assert phrase in message, (phrase, message)

    bag = _dagbag()
    assert REFRESH_DAG_FILE in bag.import_errors, sorted(bag.import_errors)
    error = bag.import_errors[REFRESH_DAG_FILE]
    assert "CatalogError" in error
    assert message in error, error  # the whole message: file, line, entry, problem and fix
    assert "ops_mv_refresh" not in bag.dags
    # Every DAG that reads the catalog at parse time reports the same, and none reports anything else.
    for file, other in bag.import_errors.items():
        assert message in other, (file, other)

    # The CLI says the same thing and exits 2 (a usage error: the user must fix the catalog).
    capsys.readouterr()  # drop what Airflow itself printed while parsing
    assert main(["plan"]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == f"mv-refresh: {message}"
    assert captured.out == ""
    assert main(["plan", "--json"]) == 2
    assert capsys.readouterr().err.strip() == f"mv-refresh: {message}"


def test_a_quoted_view_name_parses_into_a_sane_task(catalog_file, capsys):
    catalog_file(QUOTED_CATALOG)
    catalog = load_catalog()
    weird = catalog.get('ops."Weird MV"')
    assert weird.key == ("ops", "Weird MV") and weird.grain == ("Key Col",)

    bag = _dagbag()
    assert bag.import_errors == {}, "\n".join(f"{k}: {v}" for k, v in bag.import_errors.items())
    dag = bag.dags["ops_mv_refresh"]
    refresh_ids = [t.task_id for t in dag.topological_sort() if t.task_id.startswith("refresh_")]
    assert refresh_ids == ["refresh_mv_a", weird.task_id]
    # A task id Airflow, URLs and log file paths can live with: ASCII word characters only, and stable.
    assert re.fullmatch(r"refresh_ops_Weird_MV_[0-9a-f]{8}", weird.task_id), weird.task_id
    assert load_catalog().get(("ops", "Weird MV")).task_id == weird.task_id
    task = dag.get_task(weird.task_id)
    assert task.view == 'ops."Weird MV"'
    assert task.upstream_task_ids == {"refresh_mv_a"}
    assert [o.uri for o in task.outlets] == ["mv-refresh://ops/Weird%20MV"]
    assert task.doc_md == "A view whose name needs quotes."
    assert dag.get_task("health_check").upstream_task_ids == {"refresh_mv_a", weird.task_id}
    assert 'ops."Weird MV"' in dag.params.get_param("views").schema["examples"]

    capsys.readouterr()  # drop what Airflow itself printed while parsing
    assert main(["plan"]) == 0
    out = capsys.readouterr().out
    assert 'ops."Weird MV"' in out and "yes" in out
