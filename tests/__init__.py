"""usniff's tests (pytest); helpers shared with bench/ and captures/ are in tests/support."""
