"""prunectl's command line: option parsing and rendering over ``prunectl.core``."""
