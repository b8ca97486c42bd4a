"""Plumbing every layer uses: paths and atomic writes (local or gs://), settings checks, the
user's errors, preemption, multi-host set-up, provenance, metrics, process pools, and the
command-line entry plumbing. No JAX model code, no data pipeline."""
