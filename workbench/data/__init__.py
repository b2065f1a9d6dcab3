"""Readers for pair, tuple and BEIR data, with validation that names file, row and column."""

from workbench.data.beir import BeirData, load_beir, load_run, scifact_path
from workbench.data.readers import DataValidationError, load_pairs, load_tuples, read_table
from workbench.data.validation import ValidationReport, guess_column_roles, validate_data

__all__ = [
    "BeirData",
    "DataValidationError",
    "ValidationReport",
    "guess_column_roles",
    "load_beir",
    "load_pairs",
    "load_run",
    "load_tuples",
    "read_table",
    "scifact_path",
    "validate_data",
]
