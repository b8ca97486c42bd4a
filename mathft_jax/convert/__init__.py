"""HuggingFace import and export (`hf.load_hf`, `hf.save_hf`, the `import_hf` and
`export_hf` commands).

Nothing here is imported by the core: safetensors, tokenizers and transformers are
optional (the `hf` extra) and each module imports them only where it needs them.
"""
