"""Reports: the printed tables and the files a run writes."""
from .html import write_report
from .lm_table import format_lm_table
from .results import (
           check_output,
           claim_output,
           json_config,
           release_output,
           write_results,
)
from .table import format_table

__all__ = ["check_output", "claim_output", "format_lm_table", "format_table", "json_config", "release_output",
           "write_report", "write_results"]
