"""The `dihs` command line: parses arguments, calls dihs_model / service / loadtests, prints."""
