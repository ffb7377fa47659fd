"""trtrun's command line (click): `main.py` holds the group and the error handler, one module per subcommand."""
