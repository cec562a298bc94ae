"""Sans-IO protocol cores: bytes in, events out. They import neither trio nor socket."""
