"""Where images come from: tables (CSV/TSV/JSONL/Parquet/text), folders, YFCC100M, downloads, and
labelled image sets for evaluation."""
