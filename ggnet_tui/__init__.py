"""The ggnet console (Textual) and the `ggnet` command line: thin layers over core."""
