"""Published numbers shipped with dmlbench (bench/published/published.csv) or from a CSV."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from dmlbench.bench.errors import UserError


def published_keys() -> list[str]:
    """The suite keys of the published numbers shipped with dmlbench."""
    return list(dict.fromkeys(_published_table()["suite"]))


def _published_table():
    import pandas as pd

    ref = resources.files("dmlbench.bench").joinpath("published", "published.csv")
    with resources.as_file(ref) as f:
        return pd.read_csv(f)


def load_published(name_or_path: str):
    """Published numbers (a DataFrame with columns method, dataset, metric, value in percent,
    and protocol, source where known): the rows of bench/published/published.csv whose
    `suite` is `name_or_path`, or a CSV file with those columns."""
    import pandas as pd

    p = Path(name_or_path)
    if p.suffix == ".csv" or p.is_file():
        try:
            df = pd.read_csv(p)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read published numbers {str(p)!r}: {e}") from None
    else:
        table = _published_table()
        df = table[table["suite"] == name_or_path]
        if df.empty:
            raise UserError(f"no published numbers named {name_or_path!r}; valid names: "
                            f"{', '.join(published_keys())} (or give a CSV file with columns "
                            "method, dataset, metric, value)")
    missing = {"method", "dataset", "metric", "value"} - set(df.columns)
    if missing:
        raise UserError(f"published numbers {name_or_path!r} lack column(s) "
                        f"{', '.join(sorted(missing))}; expected method, dataset, metric, "
                        "value (percent) and optionally protocol, source")
    return df.reset_index(drop=True)
