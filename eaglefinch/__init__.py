"""eaglefinch: command line and demo that tie the domain packages together."""
