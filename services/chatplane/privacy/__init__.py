"""Personal data handling: detection and masking of PII before text leaves the system of record."""
