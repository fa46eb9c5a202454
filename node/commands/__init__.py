"""`openlora` command groups, one module each; `node/cli.py` wires them into the parser."""
