"""MovieLens data: fetch, parse, validate, prepare sequences and splits."""
