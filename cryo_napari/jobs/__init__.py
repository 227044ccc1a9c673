"""The job protocol, run directories and atomic writes."""
