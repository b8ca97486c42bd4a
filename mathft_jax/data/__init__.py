"""Data for mathft_jax: readers, prompt formats, vocabularies, the synthetic curriculum,
seqio tasks and the exactly-resumable `get_dataset` iterator.

Sub-modules are imported explicitly (`from mathft_jax.data import dataset`) so that the
light ones (`readers`, `formats`, `synthetic`, `packing`) never pull TensorFlow;
`vocab`, `tasks` and `dataset` do. Importing `mathft_jax.data.tasks` registers every task.
See docs/data.md.
"""
