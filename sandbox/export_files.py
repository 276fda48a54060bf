"""Write a core-banking export file the way banks do: GBK CSV with Chinese headers, UTF-8, Parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from siyu.schemas.export import EXPORT_COLUMNS

ExportFormat = Literal["csv-gbk", "csv-utf8", "csv-utf8-bom", "parquet"]
ENCODINGS: dict[str, str] = {"csv-gbk": "gbk", "csv-utf8": "utf-8", "csv-utf8-bom": "utf-8-sig"}


def write_export(frame: pd.DataFrame, path: Path, fmt: ExportFormat = "csv-gbk") -> Path:
    """Write `frame` (columns named by field, values already as the bank writes them as text).

    CSV gets the Chinese headers; Parquet keeps the English field names, as the contract says.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
        return path
    headers = {c.field: c.header for c in EXPORT_COLUMNS}
    frame.rename(columns=headers).to_csv(path, index=False, encoding=ENCODINGS[fmt])
    return path
