"""Small helpers with no model code: validation, configuration I/O, binary codes, optional packages."""
