"""Generators: ``synth`` (the bundled ReClor-format data) and ``tiny`` (the offline tiny Llama and
its tokenizer)."""
