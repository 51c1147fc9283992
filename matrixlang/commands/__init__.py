"""One module per `mxc` subcommand; each exposes `register(subparsers)`."""
