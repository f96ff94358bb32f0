"""The report: sections written by analyses, laid out as one offline HTML page."""

from zfnet.report.html import build_report
from zfnet.report.sections import (
    Figure,
    Section,
    Table,
    computed_on,
    read_sections,
    write_section,
)

__all__ = ["build_report", "computed_on", "Figure", "Section", "Table", "read_sections",
           "write_section"]
