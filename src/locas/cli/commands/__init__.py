"""One module per subcommand: ``HELP``, ``add_arguments(parser)``, ``run(args)`` (and ``TRAINS``,
``DISTRIBUTED`` where they apply)."""
