"""``b2lib.utils.tables``: every study table is written and read through one declared format."""

import pandas as pd
import pytest

from b2lib.utils.tables import TABLES, TableFormatError, read_table, table_path, write_table


def _example(name):
    fmt = TABLES[name]
    cols = {c: [1.0, 2.0] for c in fmt.columns}
    df = pd.DataFrame({**{i: ["x", "y"] for i in fmt.index}, **cols})
    if fmt.index:
        df = df.set_index(list(fmt.index))
    if fmt.header_rows == 2:
        df = pd.DataFrame(
            [[0.1, 0.2], [0.3, 0.4]],
            index=df.index,
            columns=pd.MultiIndex.from_tuples([("gain", "test"), ("gain", "train")]),
        )
    return df


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_table_round_trips(tmp_path, name):
    fmt = TABLES[name]
    df = _example(name)
    path = write_table(df, tmp_path / fmt.study, name)
    assert path == table_path(tmp_path / fmt.study, name) and path.name == fmt.file
    back = read_table(tmp_path, name)
    assert list(back.index.names) == (list(fmt.index) or [None])
    pd.testing.assert_frame_equal(back, df, check_dtype=False, check_names=False)


def test_a_missing_column_is_named_where_it_is_written_and_read(tmp_path):
    df = _example("sign_control").drop(columns="drift_low")
    with pytest.raises(TableFormatError, match=r"'sign_control'.*\['drift_low'\].*09_learning_vs_drift"):
        write_table(df, tmp_path / "signal", "sign_control")
    (tmp_path / "signal").mkdir()
    df.to_csv(tmp_path / "signal" / "sign_control.csv", index=False)  # written past the check (an older run)
    with pytest.raises(TableFormatError, match="drift_low"):
        read_table(tmp_path, "sign_control")


def test_index_unknown_table_and_missing_study(tmp_path):
    with pytest.raises(TableFormatError, match=r"indexed by \['template', 'method'\]"):
        write_table(_example("main_table").reset_index().set_index("method"), tmp_path, "main_table")
    with pytest.raises(KeyError, match="declared tables"):
        write_table(pd.DataFrame(), tmp_path, "tabel")
    assert read_table(tmp_path, "snr") is None  # a study that has not run is no table, not an error


def test_the_committed_results_read_under_their_formats():
    from b2lib.utils.paths import REPO_ROOT

    for name in TABLES:
        read_table(REPO_ROOT / "results", name)  # raises if a committed table lost a declared column
