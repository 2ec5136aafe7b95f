"""The balancing front end: methods, comparison harness, command line, data loaders, models, masked losses."""
